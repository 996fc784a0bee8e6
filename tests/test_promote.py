"""`promote` and `registry list|verify` end to end, against a real MLflow sqlite store.

The store holds a sweep written by the functions a real sweep uses (`sweep_runs.start_sweep_run`, a
`TrialLogger` per trial, `sweep_runs.end_trial_run` with each trial's outcome), with real artifacts: PEFT
safetensors from `save_peft_safetensors`, the resolved config from `dump_resolved`, a sample grid PNG.
`tests/test_sweep_integration.py` promotes from a store a real Ray sweep wrote. The store is built once
per module; each test works on its own copy of the database, so model-registry state never leaks.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from catsith_sweep import tracking
from catsith_sweep.cli import main
from catsith_sweep.config import Experiment, dump_resolved, load_experiment
from catsith_sweep.export.lora_formats import LoraLayer, load_lora_file, lora_delta, save_peft_safetensors
from catsith_sweep.promote.lora import default_registry, resolve_settings, slugify
from catsith_sweep.registry import read_weights_bin, verify_package, verify_registry, write_package
from catsith_sweep.tracking import Outcome, SweepStatus, artifacts, queries, sweep_runs
from catsith_sweep.tracking.trial_logger import TrialLogger, trial_tags

torch.set_num_threads(1)
EXP = "pixel-ships"
SHAPES = {  # layer -> (in, out)
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (32, 32),
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (24, 32),
    "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0": (32, 16),
}
# trial -> (sprite_fid, outcome): c and d score better than a but must never be promoted.
TRIALS: dict[str, tuple[float, Outcome]] = {
    "a": (5.0, Outcome.FINISHED),
    "b": (8.0, Outcome.FINISHED),
    "c": (1.0, Outcome.FAILED),
    "d": (2.0, Outcome.STOPPED_EARLY),
}


@dataclass(frozen=True)
class Store:
    uri: str
    runs: dict[str, str]  # trial -> run id
    layers: dict[str, list[LoraLayer]]
    pngs: dict[str, bytes]


def _layers(seed: int, rank: int = 4, alpha: float = 8.0) -> list[LoraLayer]:
    gen = torch.Generator().manual_seed(seed)
    return [LoraLayer(name, torch.randn(rank, i, generator=gen), torch.randn(o, rank, generator=gen) * 0.1, alpha)
            for name, (i, o) in SHAPES.items()]


def _experiment() -> Experiment:
    return Experiment.model_validate({
        "name": EXP, "trainer": "lora", "description": "Exospace ships", "lora": {"rank": 4, "alpha": 8.0},
        "search": {"metric": "sprite_fid", "mode": "min"},
        "promote": {"category": "Entity", "tags": ["ships", "pixel-art"], "license": "CC0-1.0"},
    })


def _log_trial(uri: str, exp_id: str, parent_id: str, trial: str, seed: int,
               work: Path) -> tuple[str, list[LoraLayer], bytes]:
    fid, outcome = TRIALS[trial]
    logger = TrialLogger(uri=uri, experiment_id=exp_id, parent_run_id=parent_id, trial_id=trial,
                         trial_name=f"#{seed + 1} rank=4", tags=trial_tags("sweep-1", "abc", "data"),
                         params={"lora.rank": 4}, config=_experiment().model_dump(mode="json"))
    logger.log_metrics({"sprite_fid": fid, "sprite_kid": fid / 100}, step=100)
    export, samples = work / trial / "export", work / trial / "samples"
    export.mkdir(parents=True)
    samples.mkdir(parents=True)
    layers = _layers(seed)
    save_peft_safetensors(layers, export / "pytorch_lora_weights.safetensors", metadata={"base_model": "x"})
    (export / "config.yaml").write_text(dump_resolved(_experiment()))
    Image.new("RGBA", (8, 4), (seed * 40, 0, 255, 255)).save(samples / "samples.png")
    logger.log_artifacts({p.name: p for p in export.iterdir()}, artifacts.EXPORT_DIR)
    logger.log_artifacts({"grid": samples / "samples.png"}, artifacts.SAMPLES_DIR)
    logger.flush()
    if outcome is Outcome.FAILED:
        logger.record_error(RuntimeError("CUDA out of memory"))
    sweep_runs.end_trial_run(uri, exp_id, parent_id, trial, outcome)
    return logger.run_id, layers, (samples / "samples.png").read_bytes()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    exp_id = tracking.client(uri).create_experiment(EXP, artifact_location=(root / "artifacts").as_uri())
    parent_id = sweep_runs.start_sweep_run(uri, exp_id, sweep_id="sweep-1", trainer="lora", metrics=["sprite_fid"],
                                           modes=["min"], inputs={}, params={})
    runs, layers, pngs = {}, {}, {}
    for seed, trial in enumerate(TRIALS):
        runs[trial], layers[trial], pngs[trial] = _log_trial(uri, exp_id, parent_id, trial, seed, root / "work")
    sweep_runs.end_sweep_run(uri, queries.sweep_by_run_id(uri, parent_id), SweepStatus.FINISHED)
    return Store(uri, runs, layers, pngs)


@pytest.fixture
def store(built: Store, tmp_path: Path) -> Store:
    """A private copy of the database (artifacts stay shared: nothing writes them)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(built.uri.removeprefix("sqlite:///"), db)
    return replace(built, uri=f"sqlite:///{db}")


def _promote(store: Store, registry: Path, *extra: str) -> int:
    return main(["promote", EXP, "--tracking-uri", store.uri, "--registry", str(registry), *extra])


def _registry_client(store: Store) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store.uri, registry_uri=store.uri)


def _packages(registry: Path) -> list[str]:
    return sorted(p.name for p in registry.iterdir() if not p.name.startswith("."))


def test_promote_best_finished_trial(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = tmp_path / "loras"
    assert _promote(store, registry) == 0
    out = capsys.readouterr().out
    assert f"trial a (run {store.runs['a']}), sprite_fid = 5" in out
    assert "not promoted, failed: trial c with sprite_fid = 1" in out
    assert "not promoted, stopped early: trial d with sprite_fid = 2" in out
    assert "registered version 1" in out and "alias champion -> version 1" in out

    pkg = registry / "pixel-ships"
    assert _packages(registry) == ["pixel-ships"]
    assert verify_package(pkg) == []  # no errors and no warnings
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert manifest["name"] == EXP and manifest["category"] == "Entity" and manifest["license"] == "CC0-1.0"
    assert manifest["compatible_with"] == [{"name": "diffusion_v1", "version": "1"}]
    assert manifest["tags"] == ["ships", "pixel-art"]
    assert manifest["weights"]["rank"] == 4 and manifest["weights"]["alpha"] == 8.0
    assert len(manifest["hash"]) == 32 and all(isinstance(b, int) for b in manifest["hash"])
    assert (pkg / manifest["previews"][0]["path"]).read_bytes() == store.pngs["a"]

    # CatSith's merge: W' = W + alpha/rank * A @ B with W in x out; the transpose of torch's delta.
    weights = read_weights_bin(pkg / "weights.bin")
    alpha = manifest["weights"]["alpha"]
    trained = store.layers["a"]
    assert [layer.name for layer in weights.layers] == [layer.name for layer in trained]
    for bin_layer, layer in zip(weights.layers, trained, strict=True):
        rebuilt = (alpha / weights.rank) * (bin_layer.a @ bin_layer.b)
        torch.testing.assert_close(rebuilt.T, lora_delta(layer), rtol=1e-5, atol=1e-6)
    for loaded, layer in zip(load_lora_file(pkg / "pytorch_lora_weights.safetensors"), trained, strict=True):
        torch.testing.assert_close(lora_delta(loaded), lora_delta(layer), rtol=1e-5, atol=1e-6)

    c = _registry_client(store)
    champion = c.get_model_version_by_alias(EXP, "champion")
    assert str(champion.version) == "1" and champion.run_id == store.runs["a"]
    assert champion.source.endswith("/export")
    assert champion.tags["sprite_fid"] == "5.0" and champion.tags["sprite_kid"] == "0.05"
    assert champion.tags[tracking.TAG_SWEEP] == "sweep-1" and champion.tags[tracking.TAG_TRIAL] == "a"
    assert champion.tags["catsith.package_hash"] == bytes(manifest["hash"]).hex()
    assert champion.tags["catsith.package_path"] == str(pkg.resolve())


def test_promote_again_and_another_run(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = tmp_path / "loras"
    assert _promote(store, registry) == 0
    capsys.readouterr()
    assert _promote(store, registry) == 0
    out = capsys.readouterr().out
    assert "nothing new" in out and "version 1 is already the champion" in out
    c = _registry_client(store)
    assert len(c.search_model_versions(f"name = '{EXP}'")) == 1
    assert _packages(registry) == ["pixel-ships"]

    assert _promote(store, registry, "--run-id", store.runs["b"]) == 0
    out = capsys.readouterr().out
    assert "registered version 2" in out and "alias champion -> version 2 (alias previous -> version 1)" in out
    # CatSith indexes by name: the new LoRA gets a free one rather than shadowing the old champion.
    assert "this one is named 'pixel-ships-2'" in out
    assert c.get_model_version_by_alias(EXP, "champion").run_id == store.runs["b"]
    assert c.get_model_version_by_alias(EXP, "previous").run_id == store.runs["a"]
    assert _packages(registry) == ["pixel-ships", "pixel-ships-2"]
    assert json.loads((registry / "pixel-ships-2" / "manifest.json").read_text())["name"] == "pixel-ships-2"
    assert all(findings == [] for findings in verify_registry(registry).values())
    assert c.get_model_version_by_alias(EXP, "champion").tags["catsith.package_name"] == "pixel-ships-2"

    # Back to a, then b again: no new version or package, the aliases swap.
    assert _promote(store, registry, "--run-id", store.runs["a"]) == 0
    out = capsys.readouterr().out
    assert "nothing new" in out and "alias champion -> version 1 (alias previous -> version 2)" in out
    assert _promote(store, registry, "--run-id", store.runs["b"]) == 0
    assert "nothing new" in capsys.readouterr().out
    assert len(c.search_model_versions(f"name = '{EXP}'")) == 2
    assert _packages(registry) == ["pixel-ships", "pixel-ships-2"]


def test_unfinished_trials_are_refused(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = tmp_path / "loras"
    for trial, outcome in (("c", "failed:"), ("d", "was stopped early")):
        assert _promote(store, registry, "--run-id", store.runs[trial]) == 2
        err = capsys.readouterr().err
        assert store.runs[trial] in err and outcome in err and "only finished trials" in err
        assert ("CUDA out of memory" in err) == (trial == "c")  # a failed trial's error is quoted
    assert _promote(store, registry, "--run-id", "0" * 32) == 2
    assert "no run" in capsys.readouterr().err
    assert main(["promote", "no-such-exp", "--tracking-uri", store.uri, "--registry", str(registry)]) == 2
    assert "no MLflow experiment named `no-such-exp`" in capsys.readouterr().err
    missing = tmp_path / "nowhere.db"
    assert main(["promote", EXP, "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert not missing.exists()
    assert not registry.exists()
    assert _registry_client(store).search_registered_models() == []


def test_settings_from_experiment_file_and_flags(store: Store, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    file_registry = tmp_path / "game" / "loras"
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(f"name: {EXP}\ntrainer: lora\ntracking:\n  uri: {store.uri}\n"
                        f"promote:\n  registry: {file_registry}\n  category: Effects\n  name: Ship glow\n")
    argv = ["promote", EXP, "--experiment-file", str(exp_file), "--category", "Color"]
    assert main(argv) == 0, capsys.readouterr().err
    manifest = json.loads((file_registry / "ship-glow" / "manifest.json").read_text())
    # flag > experiment file (name, registry) > the trial's logged promote section (tags, license)
    assert manifest["category"] == "Color" and manifest["name"] == "Ship glow"
    assert manifest["tags"] == ["ships", "pixel-art"] and manifest["license"] == "CC0-1.0"
    assert _registry_client(store).get_model_version_by_alias(EXP, "champion").run_id == store.runs["a"]


def test_resolve_settings_default_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_registry() == tmp_path / "data" / "catsith" / "loras"
    settings = resolve_settings(_experiment())
    assert settings.registry == (tmp_path / "data" / "catsith" / "loras").resolve()
    assert settings.name == EXP and settings.slug == "pixel-ships" and settings.category == "Entity"
    exp_file = tmp_path / "e.yaml"
    exp_file.write_text("name: other\ntrainer: lora\npromote:\n  tags: [glow]\n")
    section = load_experiment(exp_file).experiment.promote
    settings = resolve_settings(_experiment(), section, name="Ship Glow (v2)")
    assert settings.tags == ["glow"] and settings.category == "Entity" and settings.slug == "ship-glow-v2"
    assert slugify("../..") == "lora"


def _package(tmp_path: Path) -> Path:
    preview = tmp_path / "grid.png"
    Image.new("RGBA", (4, 4)).save(preview)
    result = write_package(
        tmp_path / "loras", slug="glow", layers=_layers(7), name="Glow", category="Effects", creator="me",
        tags=["glow"], previews=[(preview, "grid")], compatible_with=[("diffusion_v1", "1")],
    )
    return result.path


def _edit_manifest(pkg: Path, edit: Any) -> None:
    manifest = json.loads((pkg / "manifest.json").read_text())
    edit(manifest)
    (pkg / "manifest.json").write_text(json.dumps(manifest))


def _flip_byte(pkg: Path) -> None:
    data = bytearray((pkg / "weights.bin").read_bytes())
    data[len(data) // 2] ^= 0x01
    (pkg / "weights.bin").write_bytes(bytes(data))


def _truncate(pkg: Path) -> None:
    data = (pkg / "weights.bin").read_bytes()
    (pkg / "weights.bin").write_bytes(data[: len(data) // 2])


def _point_outside(pkg: Path) -> None:
    shutil.copy(pkg / "weights.bin", pkg.parent / "evil.bin")
    _edit_manifest(pkg, lambda m: m["weights"].update(path="../evil.bin"))


def _wrong_hash(pkg: Path) -> None:
    _edit_manifest(pkg, lambda m: m.update(hash=[(m["hash"][0] + 1) % 256, *m["hash"][1:]]))


@pytest.mark.parametrize(("tamper", "expected"), [
    (_flip_byte, "glow: blake3 of weights.bin"),
    (_truncate, "glow: weights file weights.bin is"),
    (_point_outside, "glow: weights.path '../evil.bin' contains '..' (path traversal)"),
    (_wrong_hash, "glow: package hash differs"),
])
def test_registry_verify_catches_tampering(tmp_path: Path, capsys: pytest.CaptureFixture[str], tamper: Any,
                                           expected: str) -> None:
    pkg = _package(tmp_path)
    assert main(["registry", "verify", str(pkg.parent)]) == 0
    tamper(pkg)
    capsys.readouterr()
    assert main(["registry", "verify", str(pkg.parent)]) == 2
    err = capsys.readouterr().err
    assert expected in " ".join(err.split())
    assert main(["registry", "verify", str(pkg)]) == 2


def test_registry_list_and_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = _package(tmp_path)
    _edit_manifest(pkg, lambda m: m.update(tags=[]))
    assert main(["registry", "list", str(pkg.parent)]) == 0
    out = capsys.readouterr().out
    assert "Glow" in out and "Effects" in out and "1 package(s)" in out
    assert main(["registry", "verify", str(pkg.parent)]) == 0  # warnings only
    assert "warning: no tags" in capsys.readouterr().out
    assert main(["registry", "list", str(tmp_path / "missing")]) == 2
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    capsys.readouterr()
    assert main(["registry", "list"]) == 0  # the CatSith user registry, not created yet
    assert "does not exist yet" in capsys.readouterr().out
    assert main(["registry", "verify", str(tmp_path / "missing")]) == 2
