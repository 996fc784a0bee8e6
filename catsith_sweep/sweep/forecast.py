"""How far a sweep is and how long it has left: trials done / planned, the ETA, compute spent, and the
prediction the parent run compares with what happened (`predicted_*` vs `actual_*`).

The prediction comes, cheapest first, from: a plan saved by `plan`, `run --dry-run` or `run --plan`
for this same config fingerprint in `runs/<name>/plan-<fingerprint>.json`; else from the first trial
that finishes its whole budget (its seconds, spread over its evaluations, in the planner's scheduler
simulation). The live ETA uses the seconds per step of the trials that already ended (the first trial
of each concurrent slot left out once later ones ended, since it also pays the trial process's
imports) times the steps the prediction expects of each trial still to run (early stops included),
divided over the slots. (Mean seconds per ended trial, the first version, read trials stopped early
as the norm and showed 1.8 min left with 10 to go in a 20-minute sweep.)
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from catsith_sweep.plan.saved import Predicted
from catsith_sweep.sweep.live import Live
from catsith_sweep.sweep.trainable import FAILED, FINISHED, STEP

SUMMARY_S = 5.0
"""The end of a sweep after its last trial (stopping trials, leaderboard, plots), in the ETA."""


class SweepForecast(Live, Callback):
    """A Tune callback in the driver: when each trial started and ended, the steps it reached; from
    them the ETA, the compute spent, and the first-trial prediction when no plan was saved. Counts this
    driver session only (`started`): pickled by name (sweep/live.py), so a resumed sweep counts anew."""

    def __init__(self, *, started: float, planned: int, slots: int, units_per_trial: float, total_steps: int,
                 every_n_steps: int, scheduler: str, grace_period: int, reduction_factor: int,
                 plan: Predicted | None = None) -> None:
        self.started, self.planned, self.slots = started, planned, max(1, slots)
        self.units_per_trial = units_per_trial
        self.total_steps, self.every_n_steps = total_steps, every_n_steps
        self.scheduler, self.grace_period, self.reduction_factor = scheduler, grace_period, reduction_factor
        self.predicted = plan
        self.begun: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.full: set[str] = set()
        self.steps: dict[str, int] = {}
        self.first_result: dict[str, tuple[float, int]] = {}
        """(time, step) of each trial's first evaluation."""
        self.first_trial_at: float | None = None
        self.eta_log: list[tuple[float, int, float | None]] = []
        """(elapsed, trials ended, ETA) each time a trial ended: to measure the ETA afterwards."""

    # Tune callback hooks ---------------------------------------------------------------------------
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        now = time.time()
        self.begun.setdefault(trial.trial_id, now)
        self.first_trial_at = self.first_trial_at or now

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if isinstance(result.get(STEP), int) and result[STEP] >= 0:
            self.steps[trial.trial_id] = result[STEP]
            self.first_result.setdefault(trial.trial_id, (time.time(), result[STEP]))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = getattr(trial, "last_result", None) or {}
        self._ended(trial.trial_id, full=bool(result.get(FINISHED)) and not result.get(FAILED))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial.trial_id, full=False)

    def _ended(self, trial_id: str, *, full: bool) -> None:
        now = time.time()
        self.ended.setdefault(trial_id, now)
        self.begun.setdefault(trial_id, now)
        if full:
            self.full.add(trial_id)
            if self.predicted is None:
                self.predicted = self._predict_from(trial_id, now)
        self.eta_log.append((now - self.started, len(self.ended), self.eta_s(now)))

    # Figures -------------------------------------------------------------------------------------
    def elapsed_s(self, now: float | None = None) -> float:
        return (now or time.time()) - self.started

    def compute_hours(self, now: float | None = None) -> float:
        """Trial-hours times each trial's resource share (GPU-hours, or CPU-core-hours)."""
        now = now or time.time()
        seconds = sum(self.ended.get(t, now) - s for t, s in self.begun.items())
        return seconds * self.units_per_trial / 3600

    def trial_seconds(self) -> float | None:
        """Expected seconds of one more trial of the whole budget: `step_seconds` times the budget, else
        the plan's full trial."""
        per_step = self.step_seconds()
        if per_step is not None:
            return per_step * self.total_steps
        return self.predicted.trial_seconds if self.predicted else None

    def step_seconds(self) -> float | None:
        """Seconds per trained step of the trials that ended (evaluations and trial start included; each
        slot's first trial left out once others ended, since it also pays the process's imports and, in
        a new sweep, shares the CPUs with the baseline evaluation). While only first trials have ended,
        they are timed from their first evaluation on, where they reported more than one: vae_beta's ETA
        at its first trial's end was 23% long when timed from the trial's start. First trials that reported
        once (distill_weights evaluates at the end only) are not used while a calibrated plan is there."""
        order = sorted(self.begun, key=self.begun.__getitem__)
        later = [t for t in order[self.slots:] if t in self.ended]
        pool = later or [t for t in order if t in self.ended]
        if not pool:
            return None
        if not later:
            clean = []  # (seconds, steps) after each one's first evaluation
            for t in pool:
                at, step = self.first_result.get(t, (0.0, 0))
                if 0 < step < self.steps.get(t, 0):
                    clean.append((self.ended[t] - at, self.steps[t] - step))
            if clean:
                return sum(s for s, _ in clean) / sum(n for _, n in clean)
            if self.predicted is not None and self.predicted.source == "plan":
                return None  # one evaluation each: the calibrated plan's trial time is the better guess
        # A trial that ended without reporting a step (its steps unknown) counts as the whole budget.
        steps = sum(self.steps.get(t) or self.total_steps for t in pool)
        return sum(self.ended[t] - self.begun[t] for t in pool) / steps

    def expected_steps(self) -> float:
        """Steps one trial is expected to train: the prediction's mean (early stops included), else the
        whole budget."""
        if self.predicted and self.predicted.trials:
            return min(float(self.total_steps), self.predicted.steps / self.predicted.trials)
        return float(self.total_steps)

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds until the sweep's summary is written, None before anything is known. Trials still to
        start are expected to train `expected_steps` (a scheduler stops some early); a running trial
        that already passed that many is expected to run its whole budget."""
        now = now or time.time()
        trial_s = self.trial_seconds()
        if trial_s is None:
            return None
        per_step = trial_s / max(1, self.total_steps)
        expected = self.expected_steps()
        running = []
        for trial_id, begun in self.begun.items():
            if trial_id in self.ended:
                continue
            done = self.steps.get(trial_id, 0)
            if done:  # steps are known from its evaluations
                left = expected - done if done < expected else self.total_steps - done
                running.append(max(0.0, left) * per_step)
            else:  # no evaluation yet: by the time it has run
                running.append(max(0.0, expected * per_step - (now - begun)))
        pending = max(0, self.planned - len(self.begun))
        work = pending * expected * per_step + sum(running)
        waves = work / self.slots if pending else max(running, default=0.0)
        return waves + SUMMARY_S

    def _predict_from(self, trial_id: str, now: float) -> Predicted:
        """The planner's simulation of this sweep, with the trial times this first full trial took."""
        from catsith_sweep.plan.schedule import TrialTimes, evaluation_steps, expected_sweep

        seconds = now - self.begun[trial_id]
        steps = evaluation_steps(self.total_steps, self.every_n_steps)
        before = [0, *steps[:-1]]
        segments = tuple(seconds * (s - b) / self.total_steps for s, b in zip(steps, before, strict=True))
        expectation = expected_sweep(num_trials=self.planned, times=TrialTimes(0.0, segments, 0.0), eval_steps=steps,
                                     slots=self.slots, scheduler=self.scheduler, grace_period=self.grace_period,
                                     reduction_factor=self.reduction_factor)
        fixed_before = (self.first_trial_at or now) - self.started
        fixed = fixed_before + SUMMARY_S
        low, high = expectation.wall_range
        return Predicted(wall_seconds=fixed + expectation.wall_seconds, steps=expectation.steps,
                         trials=self.planned, trial_seconds=seconds, source="first trial",
                         wall_low=fixed + low, wall_high=fixed + high)

    def progress_text(self, now: float | None = None) -> str:
        """`trials 3/8 done, elapsed 1.2 min, ETA 2.5 min`."""
        from catsith_sweep.progress import fmt_seconds

        return (f"trials {len(self.ended)}/{self.planned} done, elapsed {fmt_seconds(self.elapsed_s(now))}, "
                f"ETA {fmt_seconds(self.eta_s(now))}")

    def actual(self, end: float | None = None) -> dict[str, float]:
        """What happened, as the parent run records it next to the prediction."""
        return {"wall_seconds": (end or time.time()) - self.started, "steps": float(sum(self.steps.values())),
                "trials": float(len(self.begun))}


def compare(predicted: Predicted | None, actual: dict[str, float]) -> dict[str, float]:
    """`predicted_*`, `actual_*` and `*_error` (relative: (predicted - actual) / actual) metrics."""
    out = {f"actual_{k}": v for k, v in actual.items()}
    if predicted is None:
        return out
    for key, error in (("wall_seconds", "wall_error"), ("steps", "steps_error"), ("trials", "trials_error")):
        value = float(getattr(predicted, key))
        out[f"predicted_{key}"] = value
        if actual[key]:
            out[error] = (value - actual[key]) / actual[key]
    if predicted.wall_low is not None and predicted.wall_high is not None:
        # where the scheduler's draws make the total vary, a miss inside this range is that draw
        out["predicted_wall_seconds_p10"], out["predicted_wall_seconds_p90"] = predicted.wall_low, predicted.wall_high
        out["wall_within_p10_p90"] = float(predicted.wall_low <= actual["wall_seconds"] <= predicted.wall_high)
    return out
