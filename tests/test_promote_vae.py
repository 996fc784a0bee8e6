"""`promote` of a SpriteVAE trial end to end, against a real MLflow sqlite store.

The store holds a sweep built by hand the way a real one looks (parent run tagged like
`summary.start_parent_run`, child runs tagged like `TrialLogger`), whose trials logged the real export of
a tiny VaeTrainer (ONNX graphs checked by onnxruntime, weights, configs). Each test works on its own
copy of the database, so model-registry state never leaks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from fixtures_models import experiment
from test_vae_trainer import VAE_CONFIG

from catsith_sweep import tracking
from catsith_sweep.cli import main
from catsith_sweep.trainers.base import write_resolved_config
from catsith_sweep.trainers.vae import VaeTrainer

torch.set_num_threads(1)
EXP = "sprite-vae"
# trial -> (sprite_fid_prior, logs its config.trainer param): b is found by its exported config.yaml alone;
# c scores best but its export lacks the decoder.
TRIALS: dict[str, tuple[float, bool]] = {"a": (3.0, True), "b": (5.0, False), "c": (9.0, True)}


@dataclass(frozen=True)
class Store:
    uri: str
    runs: dict[str, str]
    latent_dim: int


def _export(cache: Path, work: Path, seed: int) -> Path:
    exp = experiment(VAE_CONFIG, cache, name=EXP, train={"seed": seed, "max_steps": 2})
    trainer = VaeTrainer(exp, work)
    trainer.setup()
    trainer.train(2, lambda step, metrics: None)
    trainer.export(work / "export")
    write_resolved_config(work / "export", exp)
    return work / "export"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, catsith_cache: Path) -> Store:
    root = tmp_path_factory.mktemp("mlflow_vae")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    c = tracking.client(uri)
    exp_id = c.create_experiment(EXP, artifact_location=(root / "artifacts").as_uri())
    parent_id = c.create_run(exp_id, run_name="sweep sweep-1", tags={
        tracking.TAG_KIND: "sweep", tracking.TAG_SWEEP: "sweep-1", "catsith.trainer": "vae",
        "catsith.metric": "sprite_fid_prior", "catsith.mode": "min"}).info.run_id
    runs = {}
    for seed, (trial, (fid, with_param)) in enumerate(TRIALS.items()):
        run_id = c.create_run(exp_id, run_name=f"trial_{trial}", tags={
            tracking.PARENT_TAG: parent_id, tracking.TAG_TRIAL: trial, tracking.TAG_KIND: "trial",
            tracking.TAG_SWEEP: "sweep-1", tracking.TAG_FINISHED: "true"}).info.run_id
        if with_param:
            c.log_param(run_id, "config.trainer", "vae")
        c.log_metric(run_id, "sprite_fid_prior", fid, step=2)
        c.log_metric(run_id, "recon_mse", 0.01 * (seed + 1), step=2)
        export = _export(catsith_cache, root / "work" / trial, seed)
        if trial == "c":
            (export / "sprite_vae_decoder.onnx").unlink()
        c.log_artifacts(run_id, str(export), "export")
        c.set_terminated(run_id, "FINISHED")
        runs[trial] = run_id
    c.set_terminated(parent_id, "FINISHED")
    return Store(uri, runs, int(VAE_CONFIG["vae"]["latent_dim"]))


@pytest.fixture
def store(built: Store, tmp_path: Path) -> Store:
    db = tmp_path / "mlflow.db"
    shutil.copy(built.uri.removeprefix("sqlite:///"), db)
    return replace(built, uri=f"sqlite:///{db}")


def _promote(store: Store, *extra: str) -> int:
    return main(["promote", EXP, "--tracking-uri", store.uri, *extra])


def _client(store: Store) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store.uri, registry_uri=store.uri)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_promote_vae_writes_the_models_folder(store: Store, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "game" / "models"
    assert _promote(store, "--run-id", store.runs["a"], "--models", str(models)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "models: wrote sprite_vae_encoder.onnx, sprite_vae_decoder.onnx, sprite_vae.json" in out
    assert "registered version 1" in out and "alias champion -> version 1" in out
    assert sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) == [
        "sprite_vae.json", "sprite_vae_decoder.onnx", "sprite_vae_encoder.onnx"]
    assert not list(models.glob(".sprite_vae.staging-*"))

    meta = json.loads((models / "sprite_vae.json").read_text())
    assert meta["latent_dim"] == store.latent_dim and meta["input_size"] == [4, 64, 64]
    assert meta["run_id"] == store.runs["a"] and meta["trial"] == "a" and meta["sweep_id"] == "sweep-1"
    assert meta["metrics"] == {"sprite_fid_prior": 3.0, "recon_mse": 0.01}
    assert meta["metric"] == {"name": "sprite_fid_prior", "mode": "min", "value": 3.0}
    for name in ("sprite_vae_encoder.onnx", "sprite_vae_decoder.onnx"):
        assert meta["sha256"][name] == _sha256(models / name)
    assert meta["onnx_check"]["passed"] is True

    # CatSith's side: decode a latent from the promoted decoder, encode the image with the encoder.
    decoder = ort.InferenceSession(str(models / "sprite_vae_decoder.onnx"), providers=["CPUExecutionProvider"])
    latent = np.random.default_rng(0).standard_normal((1, store.latent_dim)).astype(np.float32)
    (image,) = decoder.run(["image"], {"latent": latent})
    assert image.shape == (1, 4, 64, 64) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    encoder = ort.InferenceSession(str(models / "sprite_vae_encoder.onnx"), providers=["CPUExecutionProvider"])
    mu, log_var = encoder.run(["mu", "log_var"], {"image": image})
    assert mu.shape == log_var.shape == (1, store.latent_dim)

    c = _client(store)
    champion = c.get_model_version_by_alias(EXP, "champion")
    assert str(champion.version) == "1" and champion.run_id == store.runs["a"]
    assert champion.source.endswith("/export")
    assert champion.tags["sprite_fid_prior"] == "3.0"
    assert champion.tags["catsith.decoder_sha256"] == meta["sha256"]["sprite_vae_decoder.onnx"]
    assert champion.tags["catsith.models_dir"] == str(models.resolve())
    assert c.get_registered_model(EXP).tags["catsith.kind"] == "sprite_vae"


def test_promote_vae_again_then_another_run(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # the default folder is models/ in the working directory
    assert _promote(store) == 0  # best finished trial: a
    models = tmp_path / "models"
    first = (models / "sprite_vae.json").read_text()
    capsys.readouterr()
    assert _promote(store) == 0
    assert "nothing new" in capsys.readouterr().out
    assert (models / "sprite_vae.json").read_text() == first  # untouched

    # b never logged its trainer param: its exported config.yaml says vae.
    assert _promote(store, "--run-id", store.runs["b"]) == 0
    out = capsys.readouterr().out
    assert "registered version 2" in out and "alias champion -> version 2 (alias previous -> version 1)" in out
    meta = json.loads((models / "sprite_vae.json").read_text())
    assert meta["run_id"] == store.runs["b"]
    assert meta["sha256"]["sprite_vae_decoder.onnx"] == _sha256(models / "sprite_vae_decoder.onnx")
    assert meta["sha256"] != json.loads(first)["sha256"]
    c = _client(store)
    assert c.get_model_version_by_alias(EXP, "previous").run_id == store.runs["a"]


def test_promote_vae_refuses_an_incomplete_export(store: Store, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models"
    assert _promote(store, "--run-id", store.runs["c"], "--models", str(models)) == 2
    assert "exported no sprite_vae_decoder.onnx" in capsys.readouterr().err
    assert not models.exists()
    assert _client(store).search_registered_models() == []
