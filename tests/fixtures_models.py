"""Real tiny models for the trainer tests: a catsith-tiny base built by the full trainer in ~20 s.

`tests/conftest.py` re-exports the fixtures. The base, the synthetic sprite set and the sprite feature
network live in one cache folder per test session, shared by the xdist workers (a lock makes one worker
build while the others wait), so nothing touches the user's cache and the build runs once per session.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from catsith_sweep.config.schema import Experiment
from catsith_sweep.io import file_lock
from catsith_sweep.layout import BASE_PIPELINE_DIR, MODEL_INDEX

# The smallest build that still runs both phases of the full trainer and one evaluation.
TINY_BASE_CONFIG: dict[str, Any] = {
    "name": "tiny-test-base",
    "trainer": "full",
    "data": {"synth_variants": 1},
    "train": {"max_steps": 40, "batch_size": 8, "learning_rate": 1e-3, "num_threads": 1, "device": "cpu"},
    "full": {"vae_steps": 20, "vae_batch_size": 8},
    "eval": {"every_n_steps": 40, "num_metric_samples": 8, "num_inference_steps": 2, "seeds": [0]},
}

# LoRA on that base, on the same synthetic set (so its sprite net is already cached), cheap evaluations.
LORA_CONFIG: dict[str, Any] = {
    "name": "lora-test",
    "trainer": "lora",
    "data": {"synth_variants": 1},
    "train": {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-2, "num_threads": 1, "device": "cpu"},
    "eval": {"every_n_steps": 2, "num_metric_samples": 8, "num_inference_steps": 2, "seeds": [0]},
    "lora": {"rank": 4, "alpha": 8.0},
}


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in, section by section."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def experiment(config: dict[str, Any], cache: Path, **overrides: Any) -> Experiment:
    """An Experiment from `config` + `overrides` whose caches all live in `cache`."""
    data = merged(config, overrides)
    data = merged(data, {"model": {"cache_dir": str(cache)}})
    return Experiment.model_validate(data)


def lora_experiment(base: Path, cache: Path, **overrides: Any) -> Experiment:
    return experiment(merged(LORA_CONFIG, {"model": {"base": str(base)}}), cache, **overrides)


def _session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this test session that every xdist worker sees (each worker's basetemp is a child)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def catsith_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's CATSITH_CACHE: synthetic sets, sprite nets and bases built by the tests."""
    path = _session_dir(tmp_path_factory) / "catsith_cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, catsith_cache: Path) -> Path:
    """A diffusers folder of a tiny catsith base (40 steps of `base build`), usable as `model.base`."""
    from catsith_sweep.trainers.base_build import build_base

    target = _session_dir(tmp_path_factory) / "tiny_base"
    with file_lock(target.with_name(".tiny_base.lock")):
        if not (target / BASE_PIPELINE_DIR / MODEL_INDEX).is_file():
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("CATSITH_CACHE", str(catsith_cache))
                build_base(target, experiment=experiment(TINY_BASE_CONFIG, catsith_cache), log=lambda _: None)
    return target / BASE_PIPELINE_DIR


@pytest.fixture
def use_catsith_cache(catsith_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point CATSITH_CACHE at the session cache for one test."""
    monkeypatch.setenv("CATSITH_CACHE", str(catsith_cache))
    return catsith_cache
