"""Which trial to promote: the best finished trial of the latest sweep, or one named by run id.

The ranking is the sweep's own (`summary.trial_rows` + `summary.rank`, first metric and mode of the
parent run's `catsith.metric` / `catsith.mode` tags), so `promote` picks exactly the trial the
leaderboard shows on top. Failed, early-stopped and unfinished trials never rank, and naming one with
`--run-id` is refused: their exports are missing, partial or from a budget the others did not get.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from catsith_sweep import tracking
from catsith_sweep.errors import UserInputError
from catsith_sweep.sweep.summary import latest_parent_run, rank, trial_rows

TOP_SHOWN = 3
_NOT_FINISHED = {"failed": "failed", "stopped early": "was stopped early by the scheduler"}


@dataclass(frozen=True)
class Choice:
    """The trial chosen for promotion and why: its rank among the finished trials of its sweep."""

    run: Any  # mlflow.entities.Run of the trial
    experiment_id: str
    sweep_id: str
    metric: str
    mode: str
    row: dict[str, Any]
    """The trial's `trial_rows` row (trial id, outcome, metric value)."""
    top: list[dict[str, Any]] = field(default_factory=list)
    """The best finished trials, best first (the chosen one among them unless named by run id)."""
    skipped: list[dict[str, Any]] = field(default_factory=list)
    """Trials that did not finish yet score better than the chosen one (never promoted)."""
    counts: dict[str, int] = field(default_factory=dict)
    """Trials of the sweep per outcome."""
    position: int | None = None
    """1-based rank among the sweep's finished trials (None: its metric is missing or not finite)."""

    @property
    def run_id(self) -> str:
        return str(self.run.info.run_id)

    @property
    def trial(self) -> str:
        return str(self.row.get("trial") or self.run_id)

    @property
    def value(self) -> float | None:
        value = self.row.get(self.metric)
        return float(value) if isinstance(value, int | float) else None


def _sweep_metric(parent: Any) -> tuple[str, str]:
    """The sweep's first metric and its mode, from the parent run's tags."""
    metric = parent.data.tags.get("catsith.metric", "").split(",")[0]
    mode = parent.data.tags.get("catsith.mode", "min").split(",")[0] or "min"
    if not metric:
        raise UserInputError(f"sweep run {parent.info.run_id} has no catsith.metric tag: is it a catsith sweep?")
    return metric, mode


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    return counts


def _skipped_better(rows: list[dict[str, Any]], metric: str, mode: str, value: float | None) -> list[dict[str, Any]]:
    """Unfinished trials whose metric beats `value`: shown so the user sees they were passed over."""
    out = []
    for row in rows:
        other = row.get(metric)
        if row["outcome"] == "finished" or not isinstance(other, float) or not math.isfinite(other):
            continue
        if value is None or _better(other, value, mode):
            out.append(row)
    return sorted(out, key=lambda r: r[metric], reverse=(mode == "max"))


def _sweep_rows(uri: str, experiment_id: str, parent: Any) -> tuple[str, str, list[dict[str, Any]]]:
    metric, mode = _sweep_metric(parent)
    return metric, mode, trial_rows(uri, experiment_id, parent.info.run_id, [metric])


def best_trial(uri: str, experiment_name: str) -> Choice:
    """The best finished trial of the experiment's latest sweep (UserInputError if there is none)."""
    experiment_id, parent = latest_parent_run(uri, experiment_name)
    metric, mode, rows = _sweep_rows(uri, experiment_id, parent)
    ranked = rank(rows, metric, mode)
    sweep_id = parent.data.tags.get(tracking.TAG_SWEEP, parent.info.run_id)
    counts = _counts(rows)
    if not ranked:
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no trials"
        raise UserInputError(f"sweep {sweep_id} of `{experiment_name}` has no finished trial with a finite "
                             f"{metric} ({summary}): nothing to promote")
    top = ranked[0]
    run = tracking.client(uri).get_run(top["run_id"])
    skipped = _skipped_better(rows, metric, mode, top[metric])
    return Choice(run, experiment_id, sweep_id, metric, mode, top, ranked[:TOP_SHOWN], skipped, counts, 1)


def named_trial(uri: str, experiment_name: str, run_id: str) -> Choice:
    """The trial run `run_id`, checked to be a finished trial of `experiment_name` (else UserInputError)."""
    from mlflow.exceptions import MlflowException

    c = tracking.client(uri)
    experiment = c.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise UserInputError(f"no MLflow experiment named `{experiment_name}` in {uri}")
    try:
        run = c.get_run(run_id)
    except MlflowException as exc:
        raise UserInputError(f"no run {run_id} in {uri} ({exc.message})") from None
    if run.info.experiment_id != experiment.experiment_id:
        raise UserInputError(f"run {run_id} belongs to another MLflow experiment than `{experiment_name}`")
    parent_id = run.data.tags.get(tracking.PARENT_TAG)
    if not parent_id or tracking.TAG_TRIAL not in run.data.tags:
        raise UserInputError(f"run {run_id} is not a trial of a sweep (no {tracking.TAG_TRIAL} / parent run tag)")
    parent = c.get_run(parent_id)
    metric, mode, rows = _sweep_rows(uri, str(experiment.experiment_id), parent)
    row = next(r for r in rows if r["run_id"] == run_id)
    if row["outcome"] != "finished":
        error = run.data.tags.get(tracking.TAG_ERROR)
        why = _NOT_FINISHED.get(row["outcome"], f"did not finish (status {row['outcome']})")
        raise UserInputError(
            f"run {run_id} (trial {row['trial']}) {why}: only finished trials can be promoted"
            + (f" (its error: {error})" if error else "")
        )
    sweep_id = parent.data.tags.get(tracking.TAG_SWEEP, parent_id)
    ranked = rank(rows, metric, mode)
    value = row.get(metric)
    skipped = _skipped_better(rows, metric, mode, value if isinstance(value, float) else None)
    position = next((i + 1 for i, r in enumerate(ranked) if r["run_id"] == run_id), None)
    return Choice(run, str(experiment.experiment_id), sweep_id, metric, mode, row, ranked[:TOP_SHOWN], skipped,
                  _counts(rows), position)


def choose_trial(uri: str, experiment_name: str, run_id: str | None = None) -> Choice:
    """`named_trial` when a run id is given, else `best_trial`."""
    return named_trial(uri, experiment_name, run_id) if run_id else best_trial(uri, experiment_name)
