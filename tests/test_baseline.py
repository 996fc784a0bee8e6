"""The sweep's baseline on a real tiny base: evaluated through the trainer at several eval seeds (the
first is the trials' own), its noise floor the spread over them, cached per setup and keyed on what its
numbers depend on, and a failing baseline job reported rather than raised."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import torch
from fixtures_models import lora_experiment

from catsith_sweep.data.source import dataset_root
from catsith_sweep.sweep.baseline import (
    BaselineJob,
    baseline_for,
    cache_key,
    evaluate_at_seeds,
    load_cached,
    with_eval_seed,
)
from catsith_sweep.trainers import make_trainer

torch.set_num_threads(1)


def test_eval_seeds_move_the_metric_samples_and_nothing_else(tiny_base: Path, catsith_cache: Path) -> None:
    exp = lora_experiment(tiny_base, catsith_cache, eval={"noise_seeds": 3})
    assert with_eval_seed(exp, 0) is exp
    moved = with_eval_seed(exp, 2)
    assert moved.train.seed != exp.train.seed
    assert moved.model_dump(exclude={"train"}) == exp.model_dump(exclude={"train"})


def test_baseline_is_the_trainers_evaluation_at_each_eval_seed(tiny_base: Path, catsith_cache: Path,
                                                               tmp_path: Path) -> None:
    exp = lora_experiment(tiny_base, catsith_cache, eval={"noise_seeds": 3})
    baseline = evaluate_at_seeds(exp, tmp_path / "b", exp.eval.noise_seeds)
    assert len(baseline.per_seed) == 3 and baseline.metrics == baseline.per_seed[0]
    # Seed 0 is exactly what a fresh trainer (a trial before its first step) scores.
    plain = make_trainer(exp, tmp_path / "plain")
    plain.setup()
    assert plain.evaluate(tmp_path / "plain" / "eval").metrics == pytest.approx(baseline.metrics, rel=1e-5)
    # Seed 2 is what a fresh trainer with that eval seed scores (the set-up-once shortcut changes nothing).
    seeded = make_trainer(with_eval_seed(exp, 2), tmp_path / "seeded")
    seeded.setup()
    assert seeded.evaluate(tmp_path / "seeded" / "eval").metrics == pytest.approx(baseline.per_seed[2], rel=1e-5)
    fids = [m["sprite_fid"] for m in baseline.per_seed]
    assert len(set(fids)) == 3  # other samples, other scores
    assert baseline.noise_floors["noise_floor_sprite_fid"] == pytest.approx(statistics.stdev(fids))
    assert {"noise_floor_sprite_kid", "noise_floor_kind_accuracy"} <= set(baseline.noise_floors)
    assert baseline.images["samples"].is_file()


def test_one_eval_seed_gives_no_noise_floor(tiny_base: Path, catsith_cache: Path, tmp_path: Path) -> None:
    exp = lora_experiment(tiny_base, catsith_cache, eval={"noise_seeds": 1})
    baseline = evaluate_at_seeds(exp, tmp_path, 1)
    assert baseline.noise_floors == {} and len(baseline.per_seed) == 1


def test_second_sweep_on_the_same_setup_reuses_the_cached_baseline(tiny_base: Path, catsith_cache: Path,
                                                                    tmp_path: Path) -> None:
    cache = tmp_path / "cache"  # its own baselines folder; the base, data and sprite net stay in the session's
    exp = lora_experiment(tiny_base, catsith_cache, eval={"noise_seeds": 2})
    from catsith_sweep.data.dataset import fingerprint

    dataset = fingerprint(dataset_root(exp.data, catsith_cache))
    first = baseline_for(exp, tmp_path / "one", dataset_fingerprint=dataset, code_version="abc", cache_dir=cache)
    assert not first.cached and first.describe().startswith("baseline evaluated (2 eval seeds")
    assert first.images["samples"].parent == cache / "baselines" / first.key  # kept in the cache, not the sweep
    second = baseline_for(exp, tmp_path / "two", dataset_fingerprint=dataset, code_version="abc", cache_dir=cache)
    assert second.cached and second.describe().startswith("baseline reused from the cache (2 eval seeds")
    assert (second.metrics, second.noise_floors, second.key) == (first.metrics, first.noise_floors, first.key)
    assert not (tmp_path / "two").exists()  # nothing was evaluated
    # Any other code version is another key: evaluated again.
    third = baseline_for(exp, tmp_path / "three", dataset_fingerprint=dataset, code_version="def",
                         cache_dir=cache)
    assert not third.cached and third.key != first.key
    # A damaged entry is not trusted.
    (cache / "baselines" / first.key / "baseline.json").write_text("{")
    assert load_cached(cache / "baselines" / first.key) is None


def test_cache_key_follows_what_the_baseline_depends_on(tiny_base: Path, catsith_cache: Path) -> None:
    exp = lora_experiment(tiny_base, catsith_cache)

    def key(e: object = exp, dataset: str = "d1", code: str = "c1") -> str:
        return cache_key(e, dataset_fingerprint=dataset, code_version=code)  # type: ignore[arg-type]

    same = [
        lora_experiment(tiny_base, catsith_cache, name="other-name", train={"max_steps": 99,
                                                                            "learning_rate": 0.5}),
        lora_experiment(tiny_base, catsith_cache, search={"num_samples": 7}, tracking={"log_every_n_steps": 3}),
    ]
    assert all(key(e) == key() for e in same)
    changed = [
        lora_experiment(tiny_base, catsith_cache, eval={"num_metric_samples": 12}),
        lora_experiment(tiny_base, catsith_cache, eval={"noise_seeds": 5}),
        lora_experiment(tiny_base, catsith_cache, data={"val_fraction": 0.3}),
        lora_experiment(tiny_base, catsith_cache, train={"seed": 7}),
    ]
    assert len({key(), *(key(e) for e in changed)}) == 1 + len(changed)
    assert key(dataset="d2") != key() and key(code="c2") != key()


def test_cache_key_sees_a_rebuilt_base(tmp_path: Path, catsith_cache: Path, tiny_base: Path) -> None:
    import shutil

    copy = tmp_path / "base"
    shutil.copytree(tiny_base, copy)
    exp = lora_experiment(copy, catsith_cache)
    before = cache_key(exp, dataset_fingerprint="d", code_version="c")
    weights = next(copy.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b"\0")
    assert cache_key(exp, dataset_fingerprint="d", code_version="c") != before


def test_a_failing_baseline_job_is_reported_not_raised() -> None:
    said: list[str] = []

    def broken() -> object:
        raise RuntimeError("no base here")

    job = BaselineJob(broken, log=said.append).start()  # type: ignore[arg-type]
    assert job.wait(timeout=30) is None
    assert said == ["the baseline evaluation failed (RuntimeError: no base here): the leaderboard has no "
                    "baseline or noise floor for this sweep"]


SWEEP = """\
name: it_baseline
trainer: lora
model: {{base: "{base}"}}
data: {{synth_variants: 1}}
train: {{max_steps: 4, batch_size: 4, num_threads: 1}}
eval: {{every_n_steps: 4, num_metric_samples: 8, seeds: [0], num_inference_steps: 2, noise_seeds: 2}}
search:
  space: {{lora.rank: {{type: categorical, values: [2, 4]}}}}
  sampler: random
  scheduler: none
  num_samples: 2
  max_concurrent_trials: 2
"""


@pytest.mark.integration
@pytest.mark.xdist_group("ray")
@pytest.mark.timeout(900)
def test_a_second_sweep_reuses_the_baseline_and_both_log_the_noise_floor(tiny_base: Path, catsith_cache: Path,
                                                                         tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    import mlflow

    (tmp_path / "exp.yaml").write_text(SWEEP.format(base=tiny_base))
    env = {**os.environ, "CATSITH_CACHE": str(catsith_cache), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    said = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "catsith_sweep", "run", "exp.yaml"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        said.append(" ".join(proc.stdout.split()))
    assert "baseline evaluated (2 eval seeds" in said[0] and "reused from the cache" not in said[0]
    assert "baseline reused from the cache (2 eval seeds" in said[1]
    assert "noise floor" in said[1] and "before training" in said[1]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name == "it_baseline"]
    parents = [r for r in client.search_runs([experiment.experiment_id])
               if r.data.tags.get("catsith.run_kind") == "sweep"]
    assert len(parents) == 2
    first, second = (p.data.metrics for p in sorted(parents, key=lambda r: r.info.start_time))
    assert first["noise_floor_sprite_fid"] > 0 and "baseline_sprite_fid" in first
    assert {k: v for k, v in second.items() if k.startswith(("baseline_", "noise_floor_"))} == \
        {k: v for k, v in first.items() if k.startswith(("baseline_", "noise_floor_"))}
    boards = sorted((tmp_path / "runs" / "it_baseline").glob("*/leaderboard.md"))
    assert len(boards) == 2 and all("| rank | tie |" in b.read_text() for b in boards)
