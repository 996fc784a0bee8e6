"""Writing a sweep's runs: the parent run's inputs and summary, and ending runs with what happened.

A run is never left RUNNING by a sweep that stopped: the driver ends its trials' runs as Ray reports
them, and on an interruption (Ctrl-C, SIGTERM) or a driver error it ends the parent and every trial
still open as KILLED or FAILED, with `catsith.ended_by` saying why. A resumed sweep reopens them.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from catsith_sweep.tracking import child_runs, client, find_trial_run
from catsith_sweep.tracking import tags as t
from catsith_sweep.tracking.artifacts import BASELINE_DIR, HYPERVOLUME, INPUTS_DIR, LEADERBOARD_JSON, PLOTS_DIR
from catsith_sweep.tracking.rows import Outcome, SweepRun, SweepStatus, TrialRow

MAX_PARAM_LEN = 6000


def start_sweep_run(uri: str, experiment_id: str, *, sweep_id: str, trainer: str, metrics: list[str],
                    modes: list[str], inputs: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """Open a sweep's parent run; `inputs` (file name -> text) are logged under `inputs/`. Returns its id."""
    from mlflow.entities import Param

    c = client(uri)
    run = c.create_run(experiment_id, run_name=f"sweep {sweep_id}", tags={
        t.RUN_KIND: t.KIND_SWEEP, t.SWEEP: sweep_id, t.TRAINER: trainer, t.METRIC: ",".join(metrics),
        t.MODE: ",".join(modes), t.SWEEP_STATUS: SweepStatus.RUNNING.value,
    })
    run_id: str = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in inputs.items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        c.log_artifacts(run_id, tmp, INPUTS_DIR)
    c.log_batch(run_id, params=[Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()])
    return run_id


def reopen_sweep_run(uri: str, run_id: str) -> None:
    """A resumed sweep's parent run is RUNNING again (it was ended as interrupted)."""
    c = client(uri)
    c.update_run(run_id, status="RUNNING")
    c.set_tag(run_id, t.SWEEP_STATUS, SweepStatus.RUNNING.value)
    _clear_tag(c, run_id, t.ENDED_BY)


def reopen_trial_run(uri: str, run_id: str) -> None:
    """A trial continued from its checkpoint by a resumed sweep: RUNNING again, its end tags cleared."""
    c = client(uri)
    c.update_run(run_id, status="RUNNING")
    c.set_tag(run_id, t.FINISHED, "false")
    _clear_tag(c, run_id, t.ENDED_BY)


def _clear_tag(c: Any, run_id: str, key: str) -> None:
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):  # it was never set
        c.delete_tag(run_id, key)


def log_baseline(uri: str, run_id: str, metrics: Mapping[str, Any], images: Mapping[str, Path], *,
                 noise_floors: Mapping[str, float] | None = None, source: str = "") -> None:
    """The untrained starting point's metrics (`baseline_<metric>`), their noise floors (already named
    `noise_floor_<metric>`) and images on the parent run; `source` (evaluated or cached) as a tag."""
    import time

    from mlflow.entities import Metric

    c = client(uri)
    now = int(time.time() * 1000)
    logged = {f"baseline_{k}": v for k, v in metrics.items()} | dict(noise_floors or {})
    c.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in logged.items()
                                 if isinstance(v, int | float) and math.isfinite(v)])
    if source:
        c.set_tag(run_id, t.BASELINE_SOURCE, source[:5000])
    for key, path in images.items():
        c.log_artifact(run_id, str(path), f"{BASELINE_DIR}/{key}")
    for key, path in images.items():
        c.log_artifact(run_id, str(path), f"{BASELINE_DIR}/{key}")


def log_summary(uri: str, run_id: str, *, rows: list[TrialRow], metric: str, leaderboard: Path,
                best: TrialRow | None, counts: Mapping[Outcome, int], plots: list[Path],
                ties: Mapping[str, str] | None = None) -> None:
    """The end of a sweep on its parent run: leaderboard (markdown and table, whose `tie` column holds
    `ties`' mark per trial id: best, tie within the noise floor, or ""), best trial, counts, plots."""
    c = client(uri)
    c.log_artifact(run_id, str(leaderboard))
    c.log_table(run_id, {"trial": [r.trial for r in rows], "name": [r.name for r in rows],
                         "outcome": [r.outcome.value for r in rows], metric: [r.value(metric) for r in rows],
                         "tie": [(ties or {}).get(r.trial, "") for r in rows],
                         "params": [json.dumps(dict(r.params)) for r in rows]}, LEADERBOARD_JSON)
    if best is not None and (value := best.value(metric)) is not None:
        c.set_tag(run_id, t.BEST_TRIAL, best.trial)
        c.set_tag(run_id, t.BEST_RUN_ID, best.run_id)
        c.log_metric(run_id, f"best_{metric}", value)
    for outcome in (Outcome.FINISHED, Outcome.STOPPED_EARLY, Outcome.FAILED):
        c.log_metric(run_id, f"trials_{outcome.value.replace(' ', '_')}", counts.get(outcome, 0))
    log_plots(uri, run_id, plots)


def log_plots(uri: str, run_id: str, plots: list[Path]) -> None:
    """Pictures under the run's `plots/` artifact folder."""
    c = client(uri)
    for path in plots:
        c.log_artifact(run_id, str(path), PLOTS_DIR)


def log_front(uri: str, run_id: str, *, hypervolume: list[float], files: list[Path], plots: list[Path]) -> None:
    """A multi-objective sweep's Pareto front on its parent run: the hypervolume after each finished trial
    (metric history `hypervolume`, step = finished trials so far), the front's tables and its plot."""
    from mlflow.entities import Metric

    c = client(uri)
    now = int(time.time() * 1000)
    history = [Metric(HYPERVOLUME, value, now, step) for step, value in enumerate(hypervolume, start=1)]
    for start in range(0, len(history), 1000):  # MLflow's batch limit
        c.log_batch(run_id, metrics=history[start:start + 1000])
    for path in files:
        c.log_artifact(run_id, str(path))
    for path in plots:
        c.log_artifact(run_id, str(path), PLOTS_DIR)


def end_sweep_run(uri: str, sweep: SweepRun, status: SweepStatus, ended_by: str = "") -> None:
    """End the parent run with `status`; `ended_by` says why when it did not finish. A sweep that did not
    finish also ends its trials still open (KILLED, same `ended_by`)."""
    if status is not SweepStatus.FINISHED:
        end_open_trials(uri, sweep.experiment_id, sweep.run_id, ended_by)
    c = client(uri)
    c.set_tag(sweep.run_id, t.SWEEP_STATUS, status.value)
    if ended_by:
        c.set_tag(sweep.run_id, t.ENDED_BY, ended_by[:5000])
    c.set_terminated(sweep.run_id, status.mlflow_status)


def end_trial_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str, outcome: Outcome) -> None:
    """End a trial's run with its outcome (the driver's verdict; the trial cannot know it was stopped)."""
    run_id = find_trial_run(uri, experiment_id, parent_run_id, trial_id)
    if run_id is None:  # it failed before opening its run
        return
    c = client(uri)
    c.set_tag(run_id, t.FINISHED, str(outcome is Outcome.FINISHED).lower())
    if outcome is Outcome.STOPPED_EARLY:
        c.set_tag(run_id, t.EARLY, "true")
    c.set_terminated(run_id, outcome.mlflow_status)


def end_open_trials(uri: str, experiment_id: str, parent_run_id: str, ended_by: str) -> int:
    """End every trial run of the sweep still RUNNING as KILLED, tagged `ended_by`; returns how many."""
    c = client(uri)
    ended = 0
    for run in child_runs(uri, experiment_id, parent_run_id):
        if run.info.status == "RUNNING":
            c.set_tag(run.info.run_id, t.FINISHED, "false")
            c.set_tag(run.info.run_id, t.ENDED_BY, ended_by[:5000])
            c.set_terminated(run.info.run_id, Outcome.KILLED.mlflow_status)
            ended += 1
    return ended


def note_resume(uri: str, run_id: str, note: str) -> None:
    """Append `note` (why the sweep is continued) to the parent run's `catsith.resumed` tag."""
    c = client(uri)
    previous = c.get_run(run_id).data.tags.get(t.RESUMED)
    c.set_tag(run_id, t.RESUMED, f"{previous}\n{note}"[-5000:] if previous else note)


def close_orphaned_trials(uri: str, experiment_id: str, parent_run_id: str, known_trial_ids: set[Any]) -> int:
    """End child runs still RUNNING whose trial Ray Tune no longer knows (started just before a driver was
    lost, after Tune last saved its state): KILLED, with why. Returns how many."""
    c = client(uri)
    ended = 0
    for run in child_runs(uri, experiment_id, parent_run_id):
        if run.info.status == "RUNNING" and run.data.tags.get(t.TRIAL) not in known_trial_ids:
            c.set_tag(run.info.run_id, t.ERROR, "lost with the driver before Ray Tune saved the trial; "
                      "its suggestion was run again under a new trial id")
            c.set_terminated(run.info.run_id, Outcome.KILLED.mlflow_status)
            ended += 1
    return ended


def log_sweep_figures(uri: str, run_id: str, metrics: Mapping[str, float], tags: Mapping[str, str]) -> None:
    """Figures about the sweep as a whole on its parent run (predicted vs actual, budget use)."""
    c = client(uri)
    for key, value in metrics.items():
        if isinstance(value, int | float) and math.isfinite(value):
            c.log_metric(run_id, key, float(value))
    for key, text in tags.items():
        c.set_tag(run_id, key, text[:5000])
