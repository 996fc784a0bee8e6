"""Reading sweeps and trials from the tracking store, as typed rows.

Which sweep `leaderboard` and `promote` use: `--sweep-id` when given; else the newest sweep that
finished, so an interrupted or failed newer sweep never hides a finished older one (it is named, so the
user sees it was passed over); else, when no sweep finished, the newest of any status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from catsith_sweep.errors import UserInputError
from catsith_sweep.tracking import child_runs, client, redact_uri
from catsith_sweep.tracking import tags as t
from catsith_sweep.tracking.rows import SweepRun, SweepStatus, TrialRow, outcome_from_tags


def _sweep_run(run: Any) -> SweepRun:
    tags = run.data.tags
    metrics = [m for m in tags.get(t.METRIC, "").split(",") if m]
    if not metrics:
        raise UserInputError(f"sweep run {run.info.run_id} has no {t.METRIC} tag: is it a catsith sweep?")
    status = SweepStatus.from_mlflow(run.info.status)
    if tags.get(t.SWEEP_STATUS) in {s.value for s in SweepStatus} and status is not SweepStatus.RUNNING:
        status = SweepStatus(tags[t.SWEEP_STATUS])
    return SweepRun(
        run_id=run.info.run_id, experiment_id=str(run.info.experiment_id),
        sweep_id=tags.get(t.SWEEP, run.info.run_id), name=run.info.run_name or "", status=status,
        trainer=tags.get(t.TRAINER, ""), metrics=metrics,
        modes=[m for m in tags.get(t.MODE, "").split(",") if m] or ["min"] * len(metrics),
        start_time=int(run.info.start_time or 0),
    )


def _trial_row(run: Any) -> TrialRow:
    tags, params = run.data.tags, run.data.params
    trainer = params.get("config.trainer")
    return TrialRow(
        trial=tags.get(t.TRIAL, ""), run_id=run.info.run_id,
        outcome=outcome_from_tags(tags, run.info.status), name=run.info.run_name or "",
        metrics=dict(run.data.metrics), params={k: v for k, v in params.items() if not k.startswith("config.")},
        start_time=run.info.start_time, end_time=run.info.end_time, error=tags.get(t.ERROR),
        trainer=trainer.strip('"') if trainer else None, artifact_uri=run.info.artifact_uri or "",
    )


def trial_rows(uri: str, sweep: SweepRun) -> list[TrialRow]:
    """One row per trial run of `sweep` (trials that never opened a run are not in the store)."""
    return [_trial_row(run) for run in child_runs(uri, sweep.experiment_id, sweep.run_id)]


def experiment_id(uri: str, experiment_name: str) -> str:
    """The id of an existing MLflow experiment (UserInputError naming the store when absent)."""
    found = client(uri).get_experiment_by_name(experiment_name)
    if found is None:
        raise UserInputError(f"no MLflow experiment named `{experiment_name}` in {redact_uri(uri)}")
    return str(found.experiment_id)


def sweeps(uri: str, experiment_name: str) -> list[SweepRun]:
    """Every sweep of the experiment, newest first."""
    exp_id = experiment_id(uri, experiment_name)
    runs = client(uri).search_runs([exp_id], filter_string=f"tags.`{t.RUN_KIND}` = '{t.KIND_SWEEP}'",
                                   order_by=["attributes.start_time DESC"], max_results=1000)
    return [_sweep_run(run) for run in runs]


@dataclass(frozen=True)
class SweepPick:
    """The sweep a command uses, and the newer unfinished ones it passed over."""

    sweep: SweepRun
    passed_over: list[SweepRun] = field(default_factory=list)
    asked: bool = False
    """True when named by `--sweep-id`."""

    def describe(self) -> str:
        """One line: which sweep, its status, and why (printed by `leaderboard` and `promote`)."""
        s = self.sweep
        why = "as asked" if self.asked else ("the newest finished sweep" if s.status is SweepStatus.FINISHED
                                             else "the newest sweep; none has finished")
        line = f"sweep {s.sweep_id} ({s.status}, {why})"
        if self.passed_over:
            newer = ", ".join(f"{o.sweep_id} ({o.status})" for o in self.passed_over)
            line += f"; passed over newer unfinished {newer}: pass --sweep-id to use one"
        return line


def choose_sweep(uri: str, experiment_name: str, sweep_id: str | None = None) -> SweepPick:
    """`sweep_id`'s sweep, else the newest finished one, else the newest (see the module docstring)."""
    found = sweeps(uri, experiment_name)
    if not found:
        raise UserInputError(f"experiment `{experiment_name}` in {redact_uri(uri)} has no sweep yet")
    if sweep_id is not None:
        named = [s for s in found if s.sweep_id == sweep_id]
        if not named:
            known = ", ".join(f"{s.sweep_id} ({s.status})" for s in found[:10])
            raise UserInputError(f"--sweep-id {sweep_id}: no such sweep of `{experiment_name}`; its sweeps, "
                                 f"newest first: {known}")
        return SweepPick(named[0], asked=True)
    finished = [i for i, s in enumerate(found) if s.status is SweepStatus.FINISHED]
    if not finished:
        return SweepPick(found[0])
    return SweepPick(found[finished[0]], passed_over=found[:finished[0]])


def sweep_metrics(uri: str, sweep: SweepRun) -> dict[str, float]:
    """The metrics on a sweep's parent run (`baseline_<metric>`, `noise_floor_<metric>`, `best_<metric>`,
    trial counts): each one's last value."""
    return dict(client(uri).get_run(sweep.run_id).data.metrics)


def sweep_by_run_id(uri: str, run_id: str) -> SweepRun:
    return _sweep_run(client(uri).get_run(run_id))


def trial_by_run_id(uri: str, experiment_name: str, run_id: str) -> tuple[SweepRun, TrialRow]:
    """The trial run `run_id` of `experiment_name` and its sweep (UserInputError when it is neither)."""
    from mlflow.exceptions import MlflowException

    exp_id = experiment_id(uri, experiment_name)
    try:
        run = client(uri).get_run(run_id)
    except MlflowException as exc:
        raise UserInputError(f"no run {run_id} in {redact_uri(uri)} ({exc.message})") from None
    if str(run.info.experiment_id) != exp_id:
        raise UserInputError(f"run {run_id} belongs to another MLflow experiment than `{experiment_name}`")
    parent_id = run.data.tags.get(t.PARENT)
    if not parent_id or t.TRIAL not in run.data.tags:
        raise UserInputError(f"run {run_id} is not a trial of a sweep (no {t.TRIAL} / parent run tag)")
    return sweep_by_run_id(uri, parent_id), _trial_row(run)


def run_metrics(uri: str, run_id: str) -> dict[str, float]:
    """The last value of every metric of run `run_id` (a sweep's parent: `baseline_*`, `teacher_*`)."""
    return {k: float(v) for k, v in client(uri).get_run(run_id).data.metrics.items()}


TEACHER_PREFIXES = ("teacher_", "baseline_teacher_")
"""Where a sweep's parent run keeps the teacher's figures: logged by the sweep, or measured beside the
untrained student by the baseline evaluation (`baseline_` + the trainer's `teacher_<metric>`)."""
TEACHER_IDENTITIES = {"latency_ratio": 1.0}
"""Objectives that are ratios to the teacher: the teacher's own value is 1 by definition."""


@dataclass(frozen=True)
class Reference:
    """The point a multi-objective sweep is judged against: the teacher's figures when the parent run
    has them for every objective, else the untrained starting point's (`baseline_<metric>`)."""

    label: str
    """`teacher` or `baseline`."""
    values: dict[str, float]
    """Objective -> the reference's value."""


def reference_from_metrics(parent: Mapping[str, float], objectives: Sequence[str]) -> Reference | None:
    """The teacher when `parent` (a sweep's parent-run metrics) has every objective's teacher figure,
    else the baseline when it has every `baseline_<objective>`, else None."""
    def teacher(name: str) -> float | None:
        found = [parent[p + name] for p in TEACHER_PREFIXES if p + name in parent]
        if found:
            return float(found[0])
        has_teacher = any(k.startswith(TEACHER_PREFIXES) for k in parent)
        return TEACHER_IDENTITIES.get(name) if has_teacher else None

    teachers = {name: teacher(name) for name in objectives}
    if all(v is not None for v in teachers.values()):
        return Reference("teacher", {k: float(v) for k, v in teachers.items() if v is not None})
    if all(f"baseline_{name}" in parent for name in objectives):
        return Reference("baseline", {name: float(parent[f"baseline_{name}"]) for name in objectives})
    return None


def sweep_reference(uri: str, sweep: SweepRun) -> Reference | None:
    """`reference_from_metrics` of the sweep's parent run, over its searched metrics."""
    return reference_from_metrics(run_metrics(uri, sweep.run_id), sweep.metrics)


def metric_history(uri: str, metric: str) -> Any:
    """A function run id -> {step: value} of `metric` (empty for "", a trial without a run)."""
    c = client(uri)

    def history(run_id: str) -> dict[int, float]:
        if not run_id:
            return {}
        return {m.step: m.value for m in c.get_metric_history(run_id, metric)}

    return history


def experiments(uri: str) -> list[tuple[str, str]]:
    """(name, id) of every active experiment in the store; none when a sqlite store does not exist yet
    (MLflow would create an empty one)."""
    from pathlib import Path

    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_file():
        return []
    return [(e.name, str(e.experiment_id)) for e in client(uri).search_experiments()]
