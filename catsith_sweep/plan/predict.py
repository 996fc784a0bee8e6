"""From measured seconds to a sweep prediction: per-trial timeline, per-sweep fixed costs, the
scheduler's expected stops, concurrency, totals. Pure functions of numbers (see `schedule.py`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from catsith_sweep.plan.schedule import Expectation, TrialTimes, concurrent_slots, evaluation_steps, expected_sweep

# Cited costs (not measured by the planner), each with its source.
RAY_INIT_S = 6.0
"""`ray.init()` takes 5-6 s (10 s cold): field notes, "Imports and start-up"."""
RAY_MLFLOW_IMPORT_S = 5.0
"""Importing ray.tune (2.5 s) and mlflow (2.5 s), which every trial process and the driver pay: field notes."""
STACK_IMPORT_S = 17.0
"""The whole stack's imports when the planner could not time them (already imported): field notes."""
TRIAL_START_S = 0.2
"""A trial in a reused actor costs about 0.2 s to start: field notes."""
TRACKING_SHARE = 0.006
"""MLflow tracking's share of a trial's time: 0.15-0.6 % in bench/sweep_overhead.py since params and image
bytes are queued too (8 x 40-step trials, load 5 on 2 cores); the high end."""
SUMMARY_S = 3.0
"""The parent run's summary, leaderboard and plots at the end: a guess (not yet measured alone)."""
RANGE_Z = 1.28
"""The 10th-90th percentile of a normal spread, in standard deviations: how far the range reaches for the
speed drift (`Measured.step_spread`)."""


@dataclass(frozen=True)
class Measured:
    """The calibration's numbers the prediction needs (seconds)."""

    total_steps: int
    setup_s: float
    step_s: float
    eval_s: float
    save_s: float
    export_s: float
    imports_s: float
    step_spread: float = 0.0
    """sd / mean of s/step over the calibration's rounds of timed steps: how much the machine's speed moved."""


@dataclass(frozen=True)
class SweepShape:
    """The experiment's sweep settings and the machine."""

    num_trials: int
    every_n_steps: int
    scheduler: str
    grace_period: int
    reduction_factor: int
    max_concurrent: int
    cpu_per_trial: float
    gpu_per_trial: float
    threads_per_trial: int
    machine_cpus: float
    machine_gpus: float
    baseline_evaluations: int = 1
    """`eval.noise_seeds`: the sweep evaluates its untuned baseline once per eval seed (sweep/baseline.py)."""
    baseline_cached: bool = False
    """The baseline of this setup is in the cache already: the sweep pays no evaluation for it."""


@dataclass
class Prediction:
    slots: int
    contention: float
    evaluations_per_trial: int
    expectation: Expectation
    fixed_before_s: dict[str, float]
    fixed_after_s: dict[str, float]
    trial_full_s: float
    wall_s: float
    busy_s: float
    assumptions: list[str] = field(default_factory=list)
    speed_margin: float = 0.0
    """Relative widening of the range for the machine's speed drift (`RANGE_Z` x `Measured.step_spread`)."""

    @property
    def fixed_s(self) -> float:
        return sum(self.fixed_before_s.values()) + sum(self.fixed_after_s.values())

    @property
    def wall_range_s(self) -> tuple[float, float]:
        """Wall seconds of the 10th and 90th percentile simulated sweeps (schedule.Expectation), widened
        by the speed drift the calibration saw (`speed_margin`) on the trials' part."""
        low, high = self.expectation.wall_range
        return self.fixed_s + low * max(0.0, 1 - self.speed_margin), self.fixed_s + high * (1 + self.speed_margin)


def contention_factor(slots: int, threads_per_trial: int, machine_cpus: float, *, on_gpu: bool) -> float:
    """How much slower each CPU trial runs when the trials together want more threads than cores."""
    if on_gpu:
        return 1.0
    return max(1.0, slots * threads_per_trial / max(machine_cpus, 1.0))


def trial_times(m: Measured, every_n_steps: int, slow: float) -> tuple[TrialTimes, list[int]]:
    """One trial's phases: setup, each training segment with its evaluation and checkpoint, export."""
    steps = evaluation_steps(m.total_steps, every_n_steps)
    before = [0, *steps[:-1]]
    segments = tuple(((s - b) * m.step_s + m.eval_s) * slow * (1 + TRACKING_SHARE) + m.save_s
                     for s, b in zip(steps, before, strict=True))
    return TrialTimes(setup=m.setup_s * slow + TRIAL_START_S, segments=segments, export=m.export_s), steps


def predict(m: Measured, shape: SweepShape) -> Prediction:
    """Expected wall time, busy trial time and counts of a sweep, with the assumptions behind them."""
    slots = concurrent_slots(max_concurrent=shape.max_concurrent, cpu_per_trial=shape.cpu_per_trial,
                             gpu_per_trial=shape.gpu_per_trial, machine_cpus=shape.machine_cpus,
                             machine_gpus=shape.machine_gpus)
    if slots < 1:
        raise ValueError(f"no trial fits this machine: resources cpu {shape.cpu_per_trial}, gpu "
                         f"{shape.gpu_per_trial} per trial, machine {shape.machine_cpus} CPUs, "
                         f"{shape.machine_gpus} GPUs")
    slow = contention_factor(slots, shape.threads_per_trial, shape.machine_cpus, on_gpu=shape.gpu_per_trial > 0)
    times, steps = trial_times(m, shape.every_n_steps, slow)
    expectation = expected_sweep(num_trials=shape.num_trials, times=times, eval_steps=steps, slots=slots,
                                 scheduler=shape.scheduler, grace_period=shape.grace_period,
                                 reduction_factor=shape.reduction_factor)
    imports = m.imports_s if m.imports_s >= 1.0 else STACK_IMPORT_S - RAY_MLFLOW_IMPORT_S
    baseline_s = baseline_seconds(m, shape)
    fixed_before = {"driver imports": imports + RAY_MLFLOW_IMPORT_S,
                    "baseline evaluation": baseline_s / slots,
                    # in a thread, beside the driver's MLflow import and parent run (sweep/ray_session.py)
                    "ray.init": max(0.0, RAY_INIT_S - RAY_MLFLOW_IMPORT_S),
                    "first-actor imports": imports + RAY_MLFLOW_IMPORT_S}
    fixed_after = {"summary and plots": SUMMARY_S}
    busy = expectation.busy_seconds + slots * fixed_before["first-actor imports"]
    wall = sum(fixed_before.values()) + expectation.wall_seconds + sum(fixed_after.values())
    trial_full = times.setup + sum(times.segments) + times.export
    assumptions = [
        f"{slots} trial(s) at a time: min(search.max_concurrent_trials {shape.max_concurrent}, "
        f"{shape.machine_cpus:g} CPUs / resources.cpu {shape.cpu_per_trial:g}"
        + (f", {shape.machine_gpus:g} GPUs / resources.gpu {shape.gpu_per_trial:g})" if shape.gpu_per_trial else ")"),
        f"concurrent trials slow each other by x{slow:.2f} ({slots} x {shape.threads_per_trial} thread(s) on "
        f"{shape.machine_cpus:g} CPUs)" if shape.gpu_per_trial == 0 else "trials on GPUs do not slow each other",
        _scheduler_assumption(shape, len(steps)),
        _baseline_assumption(shape, baseline_s, slots),
        f"trial start {TRIAL_START_S} s (reused actors) and MLflow tracking {TRACKING_SHARE:.1%} of trial time "
        "(field notes; bench/sweep_overhead.py)",
        f"ray.init {RAY_INIT_S:g} s, beside the driver's own {RAY_MLFLOW_IMPORT_S:g} s of ray.tune+mlflow imports "
        f"(which every trial process pays too): field notes; "
        f"summary and plots {SUMMARY_S:g} s: a guess",
    ]
    return Prediction(slots=slots, contention=slow, evaluations_per_trial=len(steps), expectation=expectation,
                      fixed_before_s=fixed_before, fixed_after_s=fixed_after, trial_full_s=trial_full,
                      wall_s=wall, busy_s=busy, assumptions=assumptions, speed_margin=RANGE_Z * m.step_spread)


def baseline_seconds(m: Measured, shape: SweepShape) -> float:
    """The sweep's baseline: one trainer setup and an evaluation per eval seed (`eval.noise_seeds`), or
    nothing when it is cached."""
    return 0.0 if shape.baseline_cached else m.setup_s + shape.baseline_evaluations * m.eval_s


def _baseline_assumption(shape: SweepShape, seconds: float, slots: int) -> str:
    if shape.baseline_cached:
        return "baseline (the untuned starting point): cached for this setup, so no evaluation is paid"
    n = shape.baseline_evaluations
    return (f"baseline (the untuned starting point): trainer setup + {n} evaluation{'s' * (n != 1)} "
            f"(eval.noise_seeds {n}) = {seconds:.0f} s, run beside the first trials: it takes its share "
            f"({seconds:.0f} s / {slots} slot(s)) of the wall time; cached afterwards for this setup")


def _scheduler_assumption(shape: SweepShape, evaluations: int) -> str:
    if shape.scheduler == "none":
        return "FIFO (scheduler: none): every trial runs its whole budget"
    from catsith_sweep.plan.schedule import asha_milestones

    if shape.scheduler == "asha":
        rungs = asha_milestones(grace_period=shape.grace_period, reduction_factor=shape.reduction_factor,
                                max_t=evaluations + 1)
        where = ", ".join(f"evaluation {r}" if r <= evaluations else "the final report" for r in rungs)
        return (f"ASHA (grace {shape.grace_period}, reduction factor {shape.reduction_factor}) compares at "
                f"{where}; expected stops are averaged over simulated sweeps of random trial quality "
                "(trials keep their rank over time; a learning sampler lets more late trials through)")
    return (f"median stopping rule from evaluation {shape.grace_period}; its pauses when fewer than 2 other "
            "trials are there are not modelled")


def hours(seconds: float) -> float:
    return seconds / 3600


def fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
