"""Tune callbacks run in the driver: the live trial table, and ending each trial's MLflow run with the
status only the driver knows (finished, stopped early by the scheduler, failed)."""

from __future__ import annotations

import sys
import time
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.table import Table

from catsith_sweep.sweep.trainable import FAILED, FINISHED, STEP
from catsith_sweep.tracking import TAG_EARLY, TAG_FINISHED, find_trial_run

# A log file gets wide, plain tables; a terminal gets its own width.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)


class TrialOutcomes(Callback):
    """Remembers each trial's last result and closes its MLflow child run when it ends."""

    def __init__(self, *, uri: str, experiment_id: str, parent_run_id: str, metrics: list[str]) -> None:
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.metrics = metrics
        self.last: dict[str, dict[str, Any]] = {}
        self.outcome: dict[str, str] = {}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.last[trial.trial_id] = result

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = self.last.get(trial.trial_id, {})
        if result.get(FAILED):
            self._finish(trial.trial_id, "FAILED", "failed")
        elif result.get(FINISHED):
            self._finish(trial.trial_id, "FINISHED", "finished")
        else:
            self._finish(trial.trial_id, "KILLED", "stopped early", early=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial.trial_id, "FAILED", "errored")

    def _finish(self, trial_id: str, status: str, outcome: str, early: bool = False) -> None:
        from catsith_sweep.tracking import client

        self.outcome[trial_id] = outcome
        run_id = find_trial_run(self.uri, self.experiment_id, self.parent_run_id, trial_id)
        if run_id is None:
            return
        c = client(self.uri)
        c.set_tag(run_id, TAG_FINISHED, str(status == "FINISHED").lower())
        if early:
            c.set_tag(run_id, TAG_EARLY, "true")
        c.set_terminated(run_id, status)


class ProgressTable(Callback):
    """A trial table printed every `every` seconds and at the end: readable live and in a log file."""

    def __init__(self, outcomes: TrialOutcomes, metric: str, param_keys: list[str], every: float = 15.0,
                 quiet_every: float = 120.0) -> None:
        self.outcomes, self.metric, self.param_keys = outcomes, metric, param_keys
        self.every, self.quiet_every = every, quiet_every
        self._last_print = 0.0
        self._last_state: Any = None

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # Print when something changed (at most every `every` s), or as a heartbeat.
        state = [(t.trial_id, t.status, self.outcomes.last.get(t.trial_id, {}).get(STEP)) for t in trials]
        elapsed = time.monotonic() - self._last_print
        if (state != self._last_state and elapsed >= self.every) or elapsed >= self.quiet_every:
            self._last_state = state
            self.print_table(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.print_table(trials)

    def print_table(self, trials: list) -> None:
        self._last_print = time.monotonic()
        table = Table(title=f"trials ({sum(t.status == 'TERMINATED' for t in trials)}/{len(trials)} done)")
        for column in ("trial", "state", "step", self.metric, *self.param_keys):
            table.add_column(column, overflow="fold")
        for trial in trials:
            result = self.outcomes.last.get(trial.trial_id, {})
            state = self.outcomes.outcome.get(trial.trial_id, trial.status.lower())
            value = result.get(self.metric)
            row = [trial.trial_id, state, str(result.get(STEP, "")),
                   f"{value:.4g}" if isinstance(value, float) else "",
                   *[_short(trial.config.get(k)) for k in self.param_keys]]
            table.add_row(*row)
        console.print(table)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value) if value is not None else ""
