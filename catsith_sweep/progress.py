"""Progress a person can read: how much is done, the time elapsed and the time left (ETA).

On a terminal, long work shows a rich progress bar; when stdout is not a terminal (a log file, a
pipe, CI) the same figures come as one plain line a minute, plus one at the start and one at the end:

    base build: step 1200/2600 (46%), elapsed 5.1 min, ETA 6.2 min (unet 0.290 s/step)

The ETA is arithmetic on measured rates (`PhasedEta`): each phase of the work (the full trainer's VAE
phase, then its UNet phase) has its own seconds per unit, measured over the units done in that phase
after a warm-up unit; a phase not yet started is estimated from the measured rate of the phase before
times a ratio (the prior), and measured as soon as it starts. Pauses between units (evaluations,
checkpoints) are measured as they happen and the expected remaining ones added.

The bottom layer: rich and the standard library only.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

T = TypeVar("T")

LINE_EVERY_S = 60.0
"""A log file gets one progress line a minute."""


def fmt_seconds(seconds: float | None) -> str:
    """`42 s`, `5.1 min`, `1.3 h`; `?` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class Phase:
    """A stretch of work with one rate: `units` of it, measured once `warmup` units are done."""

    name: str
    units: int
    prior_ratio: float = 1.0
    """Before this phase runs (and without `prior_rate`): its seconds per unit are the previous
    phase's times this ratio."""
    prior_rate: float | None = None
    """Seconds per unit timed beforehand (e.g. a few steps on scratch state), until it is measured."""
    warmup: int = 1
    """Units whose time is not counted in the rate (first-call allocations, caches)."""
    done: int = 0
    measured_units: int = 0
    measured_s: float = 0.0

    @property
    def rate(self) -> float | None:
        """Measured seconds per unit, or None before any unit after the warm-up."""
        return self.measured_s / self.measured_units if self.measured_units else None


@dataclass
class PhasedEta:
    """ETA of work made of phases run in order, plus expected pauses (evaluations) between units.

    Feed it `advance(units, seconds)` (units done and the seconds they took, pauses excluded) and
    `pause(seconds)` (time between units: an evaluation, a checkpoint)."""

    phases: list[Phase]
    pauses_left: int = 0
    """Pauses still to come (e.g. evaluations)."""
    pause_prior_units: float = 0.0
    """Before any pause was measured: one pause costs this many units of the current phase."""
    pause_s: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(p.units for p in self.phases)

    @property
    def done(self) -> int:
        return sum(p.done for p in self.phases)

    def current(self) -> Phase:
        return next((p for p in self.phases if p.done < p.units), self.phases[-1])

    def advance(self, units: int, seconds: float) -> None:
        """`units` more done in `seconds` (split over phases when it crosses into the next one)."""
        per_unit = seconds / units if units > 0 else 0.0
        while units > 0:
            phase = self.current()
            if phase.done >= phase.units:
                return
            take = min(units, phase.units - phase.done)
            counted = max(0, phase.done + take - max(phase.done, phase.warmup))
            phase.measured_units += counted
            phase.measured_s += counted * per_unit
            phase.done += take
            units -= take

    def pause(self, seconds: float) -> None:
        self.pause_s.append(seconds)
        self.pauses_left = max(0, self.pauses_left - 1)

    def rates(self) -> list[float | None]:
        """Each phase's seconds per unit: measured, else the previous phase's times its prior ratio."""
        out: list[float | None] = []
        previous: float | None = None
        for phase in self.phases:
            rate = phase.rate if phase.rate is not None else phase.prior_rate
            if rate is None and previous is not None:
                rate = previous * phase.prior_ratio
            out.append(rate)
            previous = rate
        return out

    def remaining_s(self) -> float | None:
        """Seconds left, or None before anything was measured."""
        rates = self.rates()
        left = 0.0
        for phase, rate in zip(self.phases, rates, strict=True):
            if phase.done < phase.units:
                if rate is None:
                    return None
                left += (phase.units - phase.done) * rate
        if self.pauses_left:
            if self.pause_s:
                left += self.pauses_left * sum(self.pause_s) / len(self.pause_s)
            else:
                rate = rates[self.phases.index(self.current())]
                left += self.pauses_left * self.pause_prior_units * (rate or 0.0)
        return left

    def describe(self) -> str:
        """`unet 0.290 s/step` (the current phase's rate, `prior` when not measured yet)."""
        phase = self.current()
        rate = self.rates()[self.phases.index(phase)]
        if rate is None:
            return f"{phase.name}: measuring"
        return f"{phase.name} {rate:.3f} s/unit" + ("" if phase.rate is not None else " (timed ahead)"
                                                     if phase.prior_rate is not None else " (prior)")


def eta_from_rate(done: int, total: int, elapsed_s: float) -> float | None:
    """Plain ETA: the remaining units at the mean rate so far (None before the first unit)."""
    if done <= 0:
        return None
    return max(0, total - done) * elapsed_s / done


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ProgressLine:
    """One task's progress: a rich bar on a terminal, else a plain line every `every` seconds.

    `update(done, eta_s=...)` any number of times (cheap: it prints only when due); `close()` at the
    end prints the final figures. Use as a context manager."""

    def __init__(self, title: str, total: int, *, unit: str = "steps", stream: IO[str] | None = None,
                 every: float = LINE_EVERY_S, clock: Callable[[], float] = time.monotonic,
                 terminal: bool | None = None, eta_s: float | None = None, note: str = "") -> None:
        self.title, self.total, self.unit = title, total, unit
        self.stream = stream if stream is not None else sys.stdout
        self.every, self.clock = every, clock
        self.terminal = _is_terminal(self.stream) if terminal is None else terminal
        self.started = clock()
        self.done = 0
        self.eta_s: float | None = eta_s
        """Seconds left; at the start, the caller's estimate (shown on the first line)."""
        self.note = note
        self._last_line: float | None = None
        self._bar: Any = None
        self._task: Any = None
        if self.terminal:
            self._start_bar()
        else:
            self._line()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(file=self.stream, highlight=False)
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn(self.unit), TextColumn("elapsed"), TimeElapsedColumn(),
                             TextColumn("ETA {task.fields[eta]}"), TextColumn("{task.fields[note]}"),
                             console=console, transient=False, refresh_per_second=2)
        self._bar.start()
        self._task = self._bar.add_task(self.title, total=self.total, eta=fmt_seconds(self.eta_s), note=self.note)

    @property
    def elapsed_s(self) -> float:
        return self.clock() - self.started

    def text(self) -> str:
        """The figures as one line (what a log file gets)."""
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        note = f" ({self.note})" if self.note else ""
        return (f"{self.title}: {self.unit} {self.done}/{self.total}{share}, elapsed {fmt_seconds(self.elapsed_s)}, "
                f"ETA {fmt_seconds(self.eta_s)}{note}")

    def _line(self) -> None:
        self._last_line = self.clock()
        print(self.text(), file=self.stream, flush=True)

    def update(self, done: int, *, eta_s: float | None | str = "mean rate", note: str = "",
               total: int | None = None) -> None:
        """Now `done` of `total` units; `eta_s` seconds left (None: unknown yet; by default the
        remaining units at the mean rate so far)."""
        if total is not None:
            self.total = total
        self.done = done
        self.eta_s = eta_from_rate(done, self.total, self.elapsed_s) if isinstance(eta_s, str) else eta_s
        self.note = note
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=self.total, eta=fmt_seconds(self.eta_s), note=note)
        elif self._last_line is None or self.clock() - self._last_line >= self.every:
            self._line()

    def print(self, message: str) -> None:
        """A message above the bar (or a plain line)."""
        if self._bar is not None:
            self._bar.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self._last_line is not None:
            self._line()

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], *, title: str, total: int, unit: str = "items",
          stream: IO[str] | None = None) -> Iterator[T]:
    """`items` with a ProgressLine (ETA at the mean rate so far): for dataset steps of some seconds."""
    with ProgressLine(title, total, unit=unit, stream=stream) as line:
        for done, item in enumerate(items, start=1):
            yield item
            line.update(done)
