"""Early-stopping schedulers in a real sweep (the CLI, Ray Tune, Optuna, MLflow): a trial that runs its
whole budget is reported finished, and the scheduler stops the trials it should.

The budget is given in epochs and has 12 evaluations: the driver used to assume 10 for an epoch budget,
so ASHA's time limit cut every trial at its 11th report and all were "stopped early". Trials are the
SpriteVAE's (a few seconds each), one at a time so the scheduler's decisions are deterministic, over
two learning rates: one that learns, one that cannot (1e-7), so the learning one is never stopped and
the other is stopped once a learning trial has set the bar.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ray"), pytest.mark.timeout(900)]

GOOD_LR, BAD_LR = "0.003", "1e-07"  # as MLflow stores the sampled 3.0e-3 and 1.0e-7
STEPS = 12  # 44 training sprites in 3 entity-grouped batches of 16, 4 epochs; one evaluation per step
# Optuna's random sampler with this seed draws good, good, bad, good: the bad trial comes after two good
# ones, which both schedulers need to judge it (the median rule wants two other trials).
SEED = 6

EXPERIMENT = """\
# Scheduler test: SpriteVAE trials with an epoch budget of 12 evaluations.
#   python -m catsith_sweep run exp.yaml
name: sched_{scheduler}
trainer: vae
data: {{synth_variants: 1}}
train: {{epochs: 4, batch_size: 16, num_threads: 1, device: cpu}}
eval: {{every_n_steps: 1, num_metric_samples: 8}}
vae: {{latent_dim: 8, hidden_dims: [8, 16, 16, 32]}}
search:
  space:
    train.learning_rate: {{type: categorical, values: [3.0e-3, 1.0e-7]}}
  metric: recon_mse
  mode: min
  sampler: random
  seed: {seed}
  scheduler: {scheduler}
  grace_period: 1
  reduction_factor: 2
  num_samples: 4
  max_concurrent_trials: 1
"""


def _trials(db: Path) -> list[dict[str, object]]:
    """Each trial run: status, sampled learning rate and the steps its recon_mse was logged at."""
    with sqlite3.connect(db) as con:
        kinds = dict(con.execute("select run_uuid, value from tags where key = 'catsith.run_kind'").fetchall())
        runs = con.execute("select run_uuid, status from runs").fetchall()
        lrs = dict(con.execute("select run_uuid, value from params where key = 'train.learning_rate'").fetchall())
        steps: dict[str, set[int]] = {}
        for run_id, step in con.execute("select run_uuid, step from metrics where key = 'recon_mse'"):
            steps.setdefault(run_id, set()).add(int(step))
    return [{"status": status, "lr": lrs[run_id], "steps": steps.get(run_id, set())}
            for run_id, status in runs if kinds.get(run_id) == "trial"]


@pytest.mark.parametrize("scheduler", ["asha", "median"])
def test_scheduler_finishes_full_budgets_and_stops_bad_trials(scheduler: str, tmp_path: Path,
                                                              catsith_cache: Path) -> None:
    (tmp_path / "exp.yaml").write_text(EXPERIMENT.format(scheduler=scheduler, seed=SEED))
    env = {**os.environ, "CATSITH_CACHE": str(catsith_cache), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "catsith_sweep", "run", "exp.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    trials = _trials(tmp_path / "mlflow.db")
    assert len(trials) == 4
    good = [t for t in trials if t["lr"] == GOOD_LR]
    bad = [t for t in trials if t["lr"] == BAD_LR]
    assert good and bad, f"seed {SEED} sampled one learning rate only: {trials}"
    for trial in good:  # ran its whole budget: every evaluation logged, reported finished
        assert trial["status"] == "FINISHED" and trial["steps"] == set(range(1, STEPS + 1)), trial
    stopped = [t for t in bad if t["status"] == "KILLED"]
    assert stopped, f"{scheduler} stopped no trial of the learning rate that cannot learn: {trials}"
    assert all(max(t["steps"]) < STEPS for t in stopped)  # stopped before the end of their budget
