"""Tune callbacks run in the driver: the live trial table, and ending each trial's MLflow run with the
status only the driver knows (finished, stopped early by the scheduler, failed); and the name a trial
shows a person (`trial_name`, Tune's `trial_name_creator`, which also names its MLflow run)."""

from __future__ import annotations

import sys
import time
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.table import Table

from catsith_sweep.sweep.trainable import FAILED, FINISHED, STEP
from catsith_sweep.tracking import Outcome
from catsith_sweep.tracking.sweep_runs import end_trial_run

# A log file gets wide, plain tables; a terminal gets its own width.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)


class TrialOutcomes(Callback):
    """Remembers each trial's last result and closes its MLflow child run when it ends."""

    def __init__(self, *, uri: str, experiment_id: str, parent_run_id: str, metrics: list[str]) -> None:
        self.uri, self.experiment_id, self.parent_run_id = uri, experiment_id, parent_run_id
        self.metrics = metrics
        self.last: dict[str, dict[str, Any]] = {}
        self.outcome: dict[str, Outcome] = {}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.last[trial.trial_id] = result

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = self.last.get(trial.trial_id, {})
        if result.get(FAILED):
            self._finish(trial.trial_id, Outcome.FAILED)
        elif result.get(FINISHED):
            self._finish(trial.trial_id, Outcome.FINISHED)
        else:
            self._finish(trial.trial_id, Outcome.STOPPED_EARLY)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial.trial_id, Outcome.FAILED)

    def _finish(self, trial_id: str, outcome: Outcome) -> None:
        self.outcome[trial_id] = outcome
        end_trial_run(self.uri, self.experiment_id, self.parent_run_id, trial_id, outcome)


class ProgressTable(Callback):
    """A trial table printed every `every` seconds and at the end: readable live and in a log file.
    With a `forecast` (sweep/forecast.py) its title says trials done / planned, elapsed and ETA, a bar
    follows it on a terminal, and a line with the same figures comes every `line_every` seconds
    between tables."""

    def __init__(self, outcomes: TrialOutcomes, metric: str, param_keys: list[str], every: float = 15.0,
                 quiet_every: float = 120.0, *, forecast: Any = None, line_every: float = 60.0) -> None:
        self.outcomes, self.metric, self.param_keys = outcomes, metric, param_keys
        self.every, self.quiet_every = every, quiet_every
        self.forecast, self.line_every = forecast, line_every
        self._last_print = 0.0
        self._last_line = time.monotonic()
        self._last_state: Any = None

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # Print when something changed (at most every `every` s), or as a heartbeat.
        state = [(t.trial_id, t.status, self.outcomes.last.get(t.trial_id, {}).get(STEP)) for t in trials]
        elapsed = time.monotonic() - self._last_print
        if (state != self._last_state and elapsed >= self.every) or elapsed >= self.quiet_every:
            self._last_state = state
            self.print_table(trials)
        elif self.forecast is not None and time.monotonic() - self._last_line >= self.line_every:
            self._last_line = time.monotonic()
            console.print(self.forecast.progress_text(), markup=False)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.print_table(trials)

    def print_table(self, trials: list) -> None:
        self._last_print = self._last_line = time.monotonic()
        title = f"trials ({sum(t.status == 'TERMINATED' for t in trials)}/{len(trials)} done)"
        table = Table(title=self.forecast.progress_text() if self.forecast is not None else title)
        for column in ("trial", "id", "state", "step", self.metric, *self.param_keys):
            table.add_column(column, overflow="fold")
        for trial in trials:
            result = self.outcomes.last.get(trial.trial_id, {})
            state = self.outcomes.outcome.get(trial.trial_id, trial.status.lower())
            value = result.get(self.metric)
            row = [_number(trial), trial.trial_id, str(state), str(result.get(STEP, "")),
                   f"{value:.4g}" if isinstance(value, float) else "",
                   *[_short(trial.config.get(k)) for k in self.param_keys]]
            table.add_row(*row)
        console.print(table)
        if self.forecast is not None and console.is_terminal:
            from rich.progress_bar import ProgressBar

            console.print(ProgressBar(total=self.forecast.planned, completed=len(self.forecast.ended), width=60))


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value) if value is not None else ""


def _number(trial: Any) -> str:
    """`#3`: Tune's counter of the trial, the first field of its experiment tag (`3_lora.rank=4,...`)."""
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return f"#{head}" if head.isdigit() else ""


def _short_key(key: str) -> str:
    """`lora.rank` -> `rank`; `train.learning_rate` -> `lr`."""
    last = key.rsplit(".", 1)[-1]
    return {"learning_rate": "lr"}.get(last, last)


def _short_param(value: Any) -> str:
    """A sampled value in a name: 3 significant digits, exponent form below 1e-2 (`9.0e-4`)."""
    if isinstance(value, float):
        return f"{value:.1e}".replace("e-0", "e-") if value and abs(value) < 1e-2 else f"{value:.3g}"
    text = str(value)
    if text.startswith("json:"):  # a categorical choice that is a list: `[to_q, to_v]`
        text = text[5:].replace('"', "").replace(", ", ",")
    return text


def trial_name(trial: Any) -> str:
    """`#3 rank=4 alpha=4.34 lr=9.0e-4`: Tune's `trial_name_creator`. Tune shows it, and the trial's
    MLflow run takes it as its name (the trial id stays in the run's `catsith.trial_id` tag)."""
    values = " ".join(f"{_short_key(k)}={_short_param(v)}" for k, v in trial.config.items())
    return " ".join(part for part in (_number(trial) or trial.trial_id, values) if part)[:250]


def trial_dirname(trial: Any) -> str:
    """`trial_<id>`: Tune's `trial_dirname_creator` (the default folder name would start with the
    person's name above, spaces and all)."""
    return f"trial_{trial.trial_id}"
