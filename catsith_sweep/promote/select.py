"""Which trial to promote: the best finished trial of a sweep, or one named by run id.

The sweep is `tracking.queries.choose_sweep`'s (`--sweep-id`, else the newest finished sweep) and the
ranking the leaderboard's (`tracking.rank` by the sweep's first metric and mode), so `promote` picks
exactly the trial the leaderboard shows on top. Failed, early-stopped and unfinished trials never rank,
and naming one with `--run-id` is refused: their exports are missing, partial or from a budget the others
did not get.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from catsith_sweep.errors import UserInputError
from catsith_sweep.tracking import Outcome, SweepRun, TrialRow, count_outcomes, queries, rank
from catsith_sweep.tracking.rows import better_unfinished

TOP_SHOWN = 3
_NOT_FINISHED = {Outcome.FAILED: "failed", Outcome.STOPPED_EARLY: "was stopped early by the scheduler"}


@dataclass(frozen=True)
class Choice:
    """The trial chosen for promotion and why: its rank among the finished trials of its sweep."""

    row: TrialRow
    sweep: SweepRun
    top: list[TrialRow] = field(default_factory=list)
    """The best finished trials, best first (the chosen one among them unless named by run id)."""
    skipped: list[TrialRow] = field(default_factory=list)
    """Trials that did not finish yet score better than the chosen one (never promoted)."""
    counts: dict[Outcome, int] = field(default_factory=dict)
    """Trials of the sweep per outcome."""
    position: int | None = None
    """1-based rank among the sweep's finished trials (None: its metric is missing or not finite)."""
    sweep_note: str = ""
    """Which sweep this is and why (`SweepPick.describe`)."""
    rule: str = ""
    """Multi-objective sweeps: the stated rule that chose this trial (promote/pick.py); "" for the best
    by the sweep's one metric."""

    @property
    def run_id(self) -> str:
        return self.row.run_id

    @property
    def trial(self) -> str:
        return self.row.trial or self.row.run_id

    @property
    def sweep_id(self) -> str:
        return self.sweep.sweep_id

    @property
    def metric(self) -> str:
        return self.sweep.metric

    @property
    def mode(self) -> str:
        return self.sweep.mode

    @property
    def value(self) -> float | None:
        return self.row.value(self.metric)


def best_trial(uri: str, experiment_name: str, sweep_id: str | None = None) -> Choice:
    """The best finished trial of the chosen sweep (UserInputError if there is none)."""
    pick = queries.choose_sweep(uri, experiment_name, sweep_id)
    sweep = pick.sweep
    rows = queries.trial_rows(uri, sweep)
    ranked = rank(rows, sweep.metric, sweep.mode)
    counts = count_outcomes(rows)
    if not ranked:
        summary = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no trials"
        raise UserInputError(f"{pick.describe()} of `{experiment_name}` has no finished trial with a finite "
                             f"{sweep.metric} ({summary}): nothing to promote")
    top = ranked[0]
    skipped = better_unfinished(rows, sweep.metric, sweep.mode, top.value(sweep.metric))
    return Choice(top, sweep, ranked[:TOP_SHOWN], skipped, counts, 1, pick.describe())


def named_trial(uri: str, experiment_name: str, run_id: str) -> Choice:
    """The trial run `run_id`, checked to be a finished trial of `experiment_name` (else UserInputError)."""
    sweep, row = queries.trial_by_run_id(uri, experiment_name, run_id)
    if row.outcome is not Outcome.FINISHED:
        why = _NOT_FINISHED.get(row.outcome, f"did not finish ({row.outcome})")
        raise UserInputError(
            f"run {run_id} (trial {row.trial}) {why}: only finished trials can be promoted"
            + (f" (its error: {row.error})" if row.error else "")
        )
    rows = queries.trial_rows(uri, sweep)
    ranked = rank(rows, sweep.metric, sweep.mode)
    skipped = better_unfinished(rows, sweep.metric, sweep.mode, row.value(sweep.metric))
    position = next((i + 1 for i, r in enumerate(ranked) if r.run_id == run_id), None)
    return Choice(row, sweep, ranked[:TOP_SHOWN], skipped, count_outcomes(rows), position,
                  f"sweep {sweep.sweep_id} ({sweep.status}, the sweep of run {run_id})")


def choose_trial(uri: str, experiment_name: str, run_id: str | None = None, sweep_id: str | None = None) -> Choice:
    """`named_trial` when a run id is given, else `best_trial` of `sweep_id` (default: see `choose_sweep`)."""
    if run_id and sweep_id:
        raise UserInputError("--run-id and --sweep-id: give one (a run id already names its sweep)")
    return named_trial(uri, experiment_name, run_id) if run_id else best_trial(uri, experiment_name, sweep_id)
