"""A real multi-objective sweep (the CLI, Ray Tune, Optuna NSGA-II, MLflow) on the SpriteVAE: the parent
run holds the Pareto front (tables, plot, hypervolume history), the leaderboard and the end of `run` show
the front, trials the scheduler stopped stay off it, and `promote --pick` states the rule that chose."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ray"), pytest.mark.timeout(900)]

EXPERIMENT = """\
# Multi-objective test sweep: reconstruction against KL over the VAE's beta.
#   python -m catsith_sweep run exp.yaml
name: multi_vae
trainer: vae
data: {synth_variants: 1}
train: {max_steps: 6, batch_size: 16, num_threads: 1, device: cpu}
eval: {every_n_steps: 2, num_metric_samples: 8}
vae: {latent_dim: 8, hidden_dims: [8, 16, 16, 32]}
search:
  space:
    vae.beta: {type: float, low: 1.0e-3, high: 3.0, log: true}
    train.learning_rate: {type: categorical, values: [3.0e-3, 1.0e-7]}
  metric: [recon_mse, kl]
  mode: [min, min]
  sampler: nsga2
  seed: 3
  scheduler: asha
  scheduler_metric: recon_mse
  grace_period: 1
  reduction_factor: 2
  num_samples: 5
  max_concurrent_trials: 1
"""


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "CATSITH_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
            "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


def _cli(cwd: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "catsith_sweep", *args], cwd=cwd, env=_env(cache),
                          capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def _store(db: Path) -> tuple[list[tuple[int, float]], dict[str, str]]:
    """(the parent run's hypervolume history, trial id -> MLflow status)."""
    with sqlite3.connect(db) as con:
        kinds = dict(con.execute("select run_uuid, value from tags where key = 'catsith.run_kind'").fetchall())
        trial_ids = dict(con.execute("select run_uuid, value from tags where key = 'catsith.trial_id'").fetchall())
        statuses = dict(con.execute("select run_uuid, status from runs").fetchall())
        [parent] = [r for r, kind in kinds.items() if kind == "sweep"]
        history = con.execute("select step, value from metrics where run_uuid = ? and key = 'hypervolume' "
                              "order by step", (parent,)).fetchall()
    return history, {trial_ids[r]: statuses[r] for r, kind in kinds.items() if kind == "trial"}


def test_multi_objective_sweep_keeps_a_front(tmp_path: Path, catsith_cache: Path) -> None:
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    run = _cli(tmp_path, catsith_cache, "run", "exp.yaml")
    assert "Pareto front of sweep" in run.stdout and "best trials by" not in run.stdout

    [sweep_dir] = (tmp_path / "runs" / "multi_vae").iterdir()
    front = json.loads((sweep_dir / "pareto_front.json").read_text())
    assert (sweep_dir / "pareto_front.md").is_file() and (sweep_dir / "plots" / "pareto_front.png").stat().st_size
    assert front["metrics"] == ["recon_mse", "kl"] and front["reference"]["label"] == "baseline"
    history, statuses = _store(tmp_path / "mlflow.db")
    finished = [t for t, status in statuses.items() if status == "FINISHED"]
    assert len(statuses) == 5 and front["finished_trials"] == len(finished) >= 2
    assert [step for step, _ in history] == list(range(1, len(finished) + 1))
    values = [v for _, v in history]
    assert values == sorted(values) and values[-1] == pytest.approx(front["hypervolume"][-1])
    stopped = [t for t, status in statuses.items() if status == "KILLED"]  # ASHA on recon_mse stopped lr=1e-7
    assert stopped and {t["trial"] for t in front["front"]} <= set(finished)  # never on the front
    assert front["front"] and all(set(t["values"]) == {"recon_mse", "kl"} for t in front["front"])

    board = _cli(tmp_path, catsith_cache, "leaderboard", "multi_vae")
    assert "Pareto front of sweep" in board.stdout and "(baseline)" in board.stdout
    assert all(t["trial"] in board.stdout for t in front["front"])

    promoted = _cli(tmp_path, catsith_cache, "promote", "multi_vae", "--pick", "fastest-within", "50%",
                    "--models", str(tmp_path / "models"))
    assert "rule: fastest-within 50%: the best kl (min) among finished trials whose recon_mse (min) is within 50% " \
           "of the baseline's" in promoted.stdout
    assert (tmp_path / "models" / "sprite_vae_decoder.onnx").is_file()
