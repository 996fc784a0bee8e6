"""Each trainer's declared surface, checked by `validate` through the real CLI: every key a trainer
ignores is refused wherever it was set (file line, override, search space), every key it reads is
accepted, export formats and metrics it lacks are refused with the list of what it has; and the one
step-budget formula. No torch models here: `validate` must stay fast."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel

from catsith_sweep.cli import main
from catsith_sweep.config import Experiment, load_experiment
from catsith_sweep.config.space import Categorical, IntRange
from catsith_sweep.trainers import TRAINERS
from catsith_sweep.trainers.surface import (
    SURFACES,
    budget_evaluations,
    budget_steps,
    budget_variants,
    user_set_keys,
)

# Sections whose keys a trainer may or may not read (the rest belong to the engine).
CHECKED_SECTIONS = ("model", "data", "train", "eval")
# A metric each trainer reports, so an experiment that sets everything else validates.
METRIC = {"lora": "sprite_fid", "vae": "recon_mse", "full": "sprite_fid", "distill": "sprite_fid"}


def _leaf_keys(model: type[BaseModel], prefix: str) -> list[str]:
    """Every leaf key of a schema section, dotted (nested sections expanded)."""
    keys = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _leaf_keys(annotation, f"{prefix}.{name}")
        else:
            keys.append(f"{prefix}.{name}")
    return keys


def _schema_keys() -> list[str]:
    return [key for section in CHECKED_SECTIONS
            for key in _leaf_keys(Experiment.model_fields[section].annotation, section)]  # type: ignore[arg-type]


def _default(key: str) -> Any:
    """The schema default of `key`, as YAML would write it."""
    node: Any = Experiment.model_validate({"name": "x", "trainer": "lora"}).model_dump(mode="json")
    for part in key.split("."):
        node = node[part]
    return node


def _set(config: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Set dotted `key` in nested dicts (sections created as needed); returns `config`."""
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return config


def _write(tmp_path: Path, config: dict[str, Any], name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _validate(path: Path, capsys: pytest.CaptureFixture[str], *overrides: str) -> tuple[int, str]:
    code = main(["validate", str(path), *overrides])
    captured = capsys.readouterr()
    return code, " ".join(captured.err.split())


def _ignored(trainer: str) -> list[str]:
    return [key for key in _schema_keys() if not SURFACES[trainer].reads_key(key)]


def _exists(dotted: str) -> bool:
    """Whether `dotted` names a field (or section) of the experiment schema."""
    model: Any = Experiment
    for part in dotted.split("."):
        if model is None or part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
        model = next((a for a in (annotation, *get_args(annotation))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return True


def test_every_implemented_trainer_declares_a_surface_of_real_keys() -> None:
    assert set(SURFACES) == set(TRAINERS)
    for surface in SURFACES.values():
        declared = (*surface.read_keys(), *surface.budget_keys, *surface.cost_keys)
        for key in (*declared, surface.steps_before_epochs or "name"):
            assert _exists(key), (surface.name, key)
        assert set(surface.default_formats) <= set(surface.export_formats)
    assert not _exists("data.val_fractions") and not _exists("lora.rank.x")  # the check can fail


def test_trainer_classes_carry_their_surface() -> None:
    from catsith_sweep.trainers import trainer_class

    for name, surface in SURFACES.items():
        assert trainer_class(name).surface is surface


# Trainers that ignore some key of CHECKED_SECTIONS (LoRA reads every one: the held-out split's too).
IGNORING = [trainer for trainer in sorted(SURFACES) if _ignored(trainer)]


def test_which_trainers_ignore_keys() -> None:
    assert IGNORING == ["full", "vae"], "the ignored-key tests below would check fewer trainers"
    assert _ignored("lora") == []


@pytest.mark.parametrize("trainer", IGNORING)
def test_every_ignored_key_is_refused_with_its_line(trainer: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ignored = _ignored(trainer)
    assert ignored, f"{trainer} reads every key: this test would check nothing"
    # Each key on its own line, so each message must carry its own line number.
    merged: dict[str, Any] = {"name": "x", "trainer": trainer, "search": {"metric": METRIC[trainer]}}
    for key in ignored:
        _set(merged, key, _default(key))
    path = _write(tmp_path, merged)
    text = path.read_text().splitlines()
    code, err = _validate(path, capsys)
    assert code == 2
    assert f"{len(ignored)} problem(s)" in err, err
    for key in ignored:
        leaf = key.rsplit(".", 1)[-1]
        line = next(i for i, t in enumerate(text, 1) if t.strip().startswith(f"{leaf}:"))
        assert f"{path}:{line} {key}: trainer `{trainer}` does not read `{key}`" in err, (key, err)


@pytest.mark.parametrize("trainer", sorted(SURFACES))
def test_every_read_key_is_accepted(trainer: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The positive control: all the keys a trainer reads, set explicitly (to their defaults), validate."""
    config: dict[str, Any] = {"name": "x", "trainer": trainer, "search": {"metric": METRIC[trainer]}}
    read = [k for k in _schema_keys() if SURFACES[trainer].reads_key(k) and k != "train.epochs"]
    for key in read:
        _set(config, key, _default(key))
    config[trainer] = {}
    code, err = _validate(_write(tmp_path, config), capsys)
    assert code == 0, err


@pytest.mark.parametrize("trainer", IGNORING)
def test_ignored_key_as_override_and_in_the_search_space(trainer: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    key = _ignored(trainer)[0]
    value = _default(key)
    path = _write(tmp_path, {"name": "x", "trainer": trainer, "search": {"metric": METRIC[trainer]}})
    code, err = _validate(path, capsys, f"{key}={json.dumps(value)}")
    assert code == 2 and f"command line `{key}=" in err and f"does not read `{key}`" in err, err

    spaced = _write(tmp_path, {"name": "x", "trainer": trainer, "search": {
        "metric": METRIC[trainer], "space": {key: {"type": "fixed", "value": value}}}}, "space.yaml")
    code, err = _validate(spaced, capsys)
    assert code == 2 and f"{spaced}:6 search.space.{key}: trainer `{trainer}` does not read" in err, err


def test_ignored_key_in_a_space_file_names_that_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spaces = tmp_path / "search_spaces"
    spaces.mkdir()
    (spaces / "s.yaml").write_text("space:\n  vae.beta: {type: fixed, value: 1.0}\n"
                                   "  eval.guidance_scale: {type: float, low: 1, high: 3}\n")
    path = _write(tmp_path, {"name": "x", "trainer": "vae", "search": {"metric": "recon_mse", "space_file": "s"}})
    code, err = _validate(path, capsys)
    assert code == 2
    assert f"{spaces / 's.yaml'}:3 search.space.eval.guidance_scale: trainer `vae` does not read" in err, err
    assert "under `eval` it reads: every_n_steps, noise_seeds, num_metric_samples" in err


def test_keys_left_at_their_defaults_are_fine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for trainer in SURFACES:
        path = _write(tmp_path, {"name": "x", "trainer": trainer, "search": {"metric": METRIC[trainer]}})
        assert _validate(path, capsys)[0] == 0, trainer


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    from catsith_sweep.errors import ConfigError
    from catsith_sweep.trainers import check_experiment

    path = tmp_path / "e.yaml"
    path.write_text(textwrap.dedent("""\
        name: x
        trainer: full
        data: {augment: {enabled: true}, cache_latents: false}
        model: {base: somewhere}
        search: {metric: recon_mse}
        export: {formats: [diffusers, onnx]}
        """))
    with pytest.raises(ConfigError) as info:
        check_experiment(load_experiment(path))
    assert len(info.value.problems) == 5, info.value.render()


@pytest.mark.parametrize("trainer,refused", [("lora", "onnx"), ("vae", "peft_safetensors"), ("full", "catsith_json")])
def test_export_formats_a_trainer_cannot_write_are_refused(trainer: str, refused: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    surface = SURFACES[trainer]
    config = {"name": "x", "trainer": trainer, "search": {"metric": METRIC[trainer]},
              "export": {"formats": [*surface.export_formats, refused]}}
    code, err = _validate(_write(tmp_path, config), capsys)
    assert code == 2
    assert (f":6 export.formats: trainer `{trainer}` cannot write {refused}; it writes: "
            f"{', '.join(surface.export_formats)}") in err, err
    config["export"] = {"formats": list(surface.export_formats)}
    assert _validate(_write(tmp_path, config), capsys)[0] == 0


def test_metrics_a_trainer_lacks_are_refused_with_what_it_has(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # With no search.metric, the trainer's own main metric is the default, so a bare experiment validates.
    assert _validate(_write(tmp_path, {"name": "x", "trainer": "vae"}), capsys)[0] == 0
    code, err = _validate(_write(tmp_path, {"name": "x", "trainer": "vae", "search": {"metric": "sprite_fid"}}), capsys)
    assert code == 2
    assert "search.metric: trainer `vae` does not report `sprite_fid`; it reports: active_latents" in err
    config = {"name": "x", "trainer": "lora", "search": {
        "metric": "recon_mse", "space": {"lora.rank": {"type": "int", "low": 2, "high": 4}},
        "plots": [{"x": "lora.rank", "y": ["sprite_fid", "psnr"]}]}}
    code, err = _validate(_write(tmp_path, config), capsys)
    assert code == 2
    assert ":4 search.metric: trainer `lora` does not report `recon_mse`; it reports:" in err, err
    assert "search.plots[0].y: trainer `lora` does not report `psnr`" in err, err


def test_metric_names_follow_the_feature_extractor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = {"name": "x", "trainer": "lora", "eval": {"feature_extractor": "inception"}, "search": {"metric": "fid"}}
    assert _validate(_write(tmp_path, config), capsys)[0] == 0
    config["search"] = {"metric": "sprite_fid"}
    code, err = _validate(_write(tmp_path, config), capsys)
    assert code == 2 and "does not report `sprite_fid`; it reports: direction_accuracy, fid," in err, err


def test_user_set_keys_follow_the_loaders_precedence() -> None:
    raw = {"name": "x", "data": {"cache_latents": False, "augment": {"enabled": True}}, "search": {"space": {}}}
    assert set(user_set_keys(raw, [])) == {"name", "data.cache_latents", "data.augment.enabled", "search"}
    # An override replaces the file's whole section, so the file's keys under it are no longer set.
    assert set(user_set_keys(raw, ["data={val_fraction: 0.2}"])) == {"name", "data.val_fraction", "search"}
    assert set(user_set_keys(raw, ["train.epochs=3"])) >= {"train.epochs", "data.cache_latents"}


def test_validate_does_not_import_torch(tmp_path: Path) -> None:
    path = _write(tmp_path, {"name": "x", "trainer": "vae", "search": {"metric": "recon_mse"}})
    code = ("import sys; from catsith_sweep.cli import main; "
            f"assert main(['validate', {str(path)!r}]) == 0; "
            "assert 'torch' not in sys.modules, 'validate imported torch'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---- the one budget formula ------------------------------------------------------------------------
def _exp(trainer: str, **train: Any) -> Experiment:
    extra = {"full": {"vae_steps": 5}} if trainer == "full" else {}
    return Experiment.model_validate({"name": "x", "trainer": trainer, "train": train, **extra})


def test_budget_steps_from_max_steps_never_counts_the_data() -> None:
    def no_data() -> int:
        raise AssertionError("a step budget must not open the dataset")

    for trainer in SURFACES:
        assert budget_steps(_exp(trainer, max_steps=7), no_data) == 7


@pytest.mark.parametrize("trainer,before", [("lora", 0), ("vae", 0), ("full", 5)])
def test_budget_steps_from_epochs(trainer: str, before: int) -> None:
    # 10 micro-batches per epoch, 4 to a step: 3 steps per epoch (the last one short), 2 epochs.
    exp = _exp(trainer, max_steps=None, epochs=2, gradient_accumulation_steps=4)
    assert budget_steps(exp, lambda: 10) == before + 6


def test_budget_evaluations_count_the_last_partial_chunk() -> None:
    assert [budget_evaluations(steps, 4) for steps in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]


def test_budget_variants_cover_only_keys_that_change_the_budget() -> None:
    exp = _exp("vae", max_steps=None, epochs=1)
    space = {"train.batch_size": Categorical(type="categorical", values=[4, 8, 16]),
             "train.learning_rate": Categorical(type="categorical", values=[0.1, 0.2]),
             "eval.every_n_steps": IntRange(type="int", low=2, high=9),
             "data.val_fraction": Categorical(type="categorical", values=[0.1, 0.3])}
    variants = list(budget_variants(exp, space))
    assert len(variants) == 3 * 2 * 2 and all("train.learning_rate" not in v for v in variants)
    assert list(budget_variants(exp, {})) == [{}]


def test_dry_run_refuses_what_validate_refuses_and_plans_the_trainers_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], use_catsith_cache: Path) -> None:
    config: dict[str, Any] = {"name": "x", "trainer": "vae", "search": {"metric": "recon_mse"},
                              "data": {"synth_variants": 1},
                              "train": {"max_steps": 10, "gradient_checkpointing": True},
                              "eval": {"every_n_steps": 4}}
    assert main(["run", str(_write(tmp_path, config)), "--dry-run"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ":9 train.gradient_checkpointing: trainer `vae` does not read" in err, err
    del config["train"]["gradient_checkpointing"]
    assert main(["run", str(_write(tmp_path, config)), "--dry-run"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "10 steps, evaluation every 4: 3 evaluations" in shown
    assert "held-out split │ held out 3 entities (17 images), training on 16" in shown, shown  # table wraps


def test_plan_shows_the_heldout_split_and_refuses_one_too_small(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], use_catsith_cache: Path) -> None:
    config: dict[str, Any] = {"name": "x", "trainer": "lora", "data": {"synth_variants": 1, "val_fraction": 0.0},
                              "train": {"max_steps": 2}, "eval": {"every_n_steps": 2}}
    assert main(["run", str(_write(tmp_path, config)), "--dry-run"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("data.val_fraction 0.0 holds out 0 of 19 entities, 0 of 61 images; held-out metrics need at least "
            "8 held-out images") in err, err


def test_plan_split_is_the_trainers_split(use_catsith_cache: Path) -> None:
    """The plan reads labels without decoding images; it must draw what the trainers draw."""
    from catsith_sweep.data.source import open_dataset
    from catsith_sweep.trainers.heldout import experiment_split, planned_split

    for fraction, seed in ((0.15, 0), (0.3, 5)):
        exp = Experiment.model_validate({"name": "x", "trainer": "vae", "data": {
            "synth_variants": 1, "val_fraction": fraction, "split_seed": seed}})
        planned = planned_split(exp)
        assert planned == experiment_split(exp, open_dataset(exp.data, exp.model.cache_dir, augment=False))
        assert len(planned.heldout) >= 8 and planned.seed == seed


@pytest.mark.parametrize("key,value", [("data.val_fraction", [0.1, 0.3]), ("data.split_seed", [0, 1])])
def test_the_split_is_never_searched(key: str, value: list[Any], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, {"name": "x", "trainer": "lora", "search": {
        "space": {key: {"type": "categorical", "values": value}}}})
    code, err = _validate(path, capsys)
    assert code == 2
    assert f"{path}:5 search.space.{key}: the held-out split must be the same in every trial of a sweep" in err, err
    path = _write(tmp_path, _set({"name": "x", "trainer": "lora"}, key, value[1]))
    assert _validate(path, capsys)[0] == 0  # set in the file: fine
