"""Typed views of tracked runs: a sweep (`SweepRun`) and its trials (`TrialRow`, with an `Outcome`).

Everything above `tracking` reads runs through these; nothing else reads MLflow `Run` objects.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SPLIT_PREFIX = "split."
"""Params that record the held-out split (`data/split.py`), the same for every trial of a sweep."""


class Outcome(StrEnum):
    """How a trial ended, as the leaderboard says it. Only FINISHED trials are ranked or promoted."""

    FINISHED = "finished"
    STOPPED_EARLY = "stopped early"
    """The scheduler (ASHA, median) stopped it: its scores are from a shorter budget."""
    FAILED = "failed"
    KILLED = "killed"
    """The sweep was interrupted or killed while the trial ran (a resumed sweep continues it)."""
    RUNNING = "running"
    """Still running, or its driver died without ending it."""

    @property
    def mlflow_status(self) -> str:
        """The MLflow run status a trial with this outcome ends with."""
        return {Outcome.FINISHED: "FINISHED", Outcome.FAILED: "FAILED", Outcome.RUNNING: "RUNNING"}.get(
            self, "KILLED")


class SweepStatus(StrEnum):
    """How a sweep's parent run ended (`RUNNING`: running now, or its driver was killed)."""

    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    FAILED = "failed"

    @property
    def mlflow_status(self) -> str:
        return {SweepStatus.RUNNING: "RUNNING", SweepStatus.FINISHED: "FINISHED",
                SweepStatus.INTERRUPTED: "KILLED", SweepStatus.FAILED: "FAILED"}[self]

    @classmethod
    def from_mlflow(cls, status: str) -> SweepStatus:
        return {"FINISHED": cls.FINISHED, "KILLED": cls.INTERRUPTED, "FAILED": cls.FAILED}.get(status, cls.RUNNING)


@dataclass(frozen=True)
class SweepRun:
    """A sweep's parent run."""

    run_id: str
    experiment_id: str
    sweep_id: str
    name: str
    status: SweepStatus
    trainer: str
    metrics: list[str]
    """The searched metrics; the first ranks trials."""
    modes: list[str]
    start_time: int = 0
    """Milliseconds since the epoch."""

    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def mode(self) -> str:
        return self.modes[0] if self.modes else "min"


@dataclass(frozen=True)
class TrialRow:
    """One trial of a sweep: its run, how it ended, its final metrics and sampled params."""

    trial: str
    """Ray Tune's trial id."""
    run_id: str
    """"" when the trial failed before it could open its run."""
    outcome: Outcome
    name: str = ""
    """The run's name: `#3 rank=4 alpha=4.34 lr=9.0e-4`."""
    metrics: Mapping[str, float] = field(default_factory=dict)
    """Each metric's last logged value."""
    params: Mapping[str, str] = field(default_factory=dict)
    """The sampled params as logged (JSON text for numbers and lists), without the `config.*` ones."""
    start_time: int | None = None
    end_time: int | None = None
    """Milliseconds since the epoch when its run ended (None while running): the order trials finished in."""
    error: str | None = None
    trainer: str | None = None
    """The trainer the trial ran (its logged `config.trainer`)."""
    artifact_uri: str = ""

    def value(self, metric: str) -> float | None:
        """The final value of `metric`, when it is a finite number."""
        value = self.metrics.get(metric)
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    def param(self, key: str) -> Any:
        """A sampled param decoded from its logged text (`"4"` -> 4, `"[\\"to_q\\"]"` -> ["to_q"])."""
        text = self.params[key]
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    @property
    def label(self) -> str:
        """`#3 d3a478ea` (number and id) when the run is named for a person, else the trial id."""
        number = self.name.split(" ", 1)[0] if self.name.startswith("#") else ""
        return f"{number} {self.trial}".strip()

    def params_text(self, sep: str = ", ") -> str:
        """Sampled params as a person reads them: floats to 4 significant digits (MLflow keeps text).
        The held-out split's facts (`split.*`) are left out: every trial of a sweep has the same."""
        return sep.join(f"{k}={_short(v)}" for k, v in sorted(self.params.items()) if not k.startswith(SPLIT_PREFIX))

    def summary(self, metric: str) -> dict[str, Any]:
        """Plain facts for `sweep.json`."""
        return {"trial": self.trial, "name": self.name, "run_id": self.run_id, metric: self.value(metric),
                "params": dict(self.params)}


def rank(rows: Iterable[TrialRow], metric: str, mode: str) -> list[TrialRow]:
    """Finished trials with a finite `metric`, best first (no other outcome ever ranks)."""
    usable = [r for r in rows if r.outcome is Outcome.FINISHED and r.value(metric) is not None]
    return sorted(usable, key=lambda r: r.value(metric) or 0.0, reverse=(mode == "max"))


def better_unfinished(rows: Iterable[TrialRow], metric: str, mode: str, than: float | None) -> list[TrialRow]:
    """Trials that did not finish yet score better than `than` (shown, never promoted), best first."""
    out = []
    for row in rows:
        value = row.value(metric)
        if row.outcome is Outcome.FINISHED or value is None:
            continue
        if than is None or (value > than if mode == "max" else value < than):
            out.append(row)
    return sorted(out, key=lambda r: r.value(metric) or 0.0, reverse=(mode == "max"))


def count_outcomes(rows: Iterable[TrialRow]) -> dict[Outcome, int]:
    """Trials per outcome, in the enum's order, outcomes with no trial left out."""
    counts = {outcome: 0 for outcome in Outcome}
    for row in rows:
        counts[row.outcome] += 1
    return {k: v for k, v in counts.items() if v}


def outcome_from_tags(tags: Mapping[str, str], status: str) -> Outcome:
    """A trial run's outcome from its tags (written when it ended) and MLflow status."""
    from catsith_sweep.tracking import tags as t

    if tags.get(t.ERROR):
        return Outcome.FAILED
    if tags.get(t.EARLY) == "true":
        return Outcome.STOPPED_EARLY
    if tags.get(t.FINISHED) == "true":
        return Outcome.FINISHED
    return {"FINISHED": Outcome.FINISHED, "FAILED": Outcome.FAILED, "KILLED": Outcome.KILLED}.get(
        status, Outcome.RUNNING)


def _short(text: str) -> str:
    try:
        number = float(text)
    except ValueError:
        return text
    return text if number.is_integer() and "." not in text else f"{number:.4g}"
