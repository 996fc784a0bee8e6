"""Pure prediction logic: which evaluations each trial gets under the sweep's scheduler, and how the
trials pack onto the machine's slots. No torch, no Ray: plain numbers in, plain numbers out.

The scheduler rules are Ray Tune's, as `catsith_sweep/sweep/tuner.py` configures them (time is
counted in reports: report m (1-based) is the m-th evaluation; the last, report n, is also the final
report, sent after the export, so a trial that reaches it has trained its whole budget):

- ASHA (`AsyncHyperBandScheduler`, one bracket, `stop_last_trials=True`): rungs at
  `grace * rf**k` for `k < int(log(max_t / grace) / log(rf) + 1)`. A trial reaching a rung is
  stopped when its reward is below the `(1 - 1/rf)` percentile of the rewards already recorded
  there (the first trial at a rung always goes on), then its reward is recorded.
- Median stopping (`MedianStoppingRule`, `min_samples_required=2`): from `grace` on, a trial is
  stopped when its best reward is below the median of the running means of the other trials that
  have reached the same time. (Its pausing of trials when fewer than 2 others are there is not
  modelled: those trials are assumed to continue.)
- FIFO (`scheduler: none`): every trial runs its whole budget.

What is unknown before a sweep is how good each trial will be. The expectation is over trials of
random quality, independent and identically distributed, each keeping its rank at every evaluation
(a trial's metric curve never crosses another's). A sampler that improves over time (TPE after its
start-up trials) lets more late trials through than this predicts.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

SCHEDULERS = ("asha", "median", "none")


def asha_milestones(*, grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The rungs (report numbers) at which Ray's ASHA compares trials, ascending."""
    rungs = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
    return [int(grace_period * reduction_factor**k) for k in range(rungs)]


def evaluation_steps(total_steps: int, every_n_steps: int) -> list[int]:
    """Optimizer step count at each evaluation, as `run_trial` spaces them (the last at the budget)."""
    points = list(range(every_n_steps, total_steps, every_n_steps))
    return [*points, total_steps]


def concurrent_slots(*, max_concurrent: int, cpu_per_trial: float, gpu_per_trial: float,
                     machine_cpus: float, machine_gpus: float) -> int:
    """Trials Ray can run at once: the search's cap, limited by whole resource shares of the machine
    (Ray places a trial only when its whole `resources.cpu`/`resources.gpu` request fits)."""
    slots = min(max_concurrent, math.floor(machine_cpus / cpu_per_trial + 1e-9))
    if gpu_per_trial > 0:
        slots = min(slots, math.floor(machine_gpus / gpu_per_trial + 1e-9))
    return max(0, slots)


@dataclass(frozen=True)
class TrialTimes:
    """Seconds of one trial's phases: setup, the training segment before each evaluation (evaluation
    and checkpoint included), and the final export."""

    setup: float
    segments: tuple[float, ...]
    export: float


@dataclass
class SweepOutcome:
    """One simulated sweep: per-trial reports done (1..n; n = finished) and the timeline."""

    reports: list[int]
    wall_seconds: float
    busy_seconds: float


def _asha_decide(state: dict[int, list[float]], milestones: list[int], rf: float, report: int,
                 reward: float) -> bool:
    """Ray's ASHA decision at `report` for a trial of `reward`: True to stop. Records the reward."""
    if report not in milestones:
        return False
    recorded = state.setdefault(report, [])
    stop = bool(recorded) and reward < float(np.nanpercentile(recorded, (1 - 1 / rf) * 100))
    recorded.append(reward)
    return stop


def _median_decide(latest: dict[int, int], rewards: list[float], trial: int, report: int, grace: int) -> bool:
    """Ray's median rule with constant curves: a trial's best and running mean are its reward."""
    latest[trial] = report
    if report < grace:
        return False
    others = [rewards[t] for t, r in latest.items() if t != trial and r >= report]
    return len(others) >= 2 and rewards[trial] < float(np.median(others))


def simulate_sweep(rewards: list[float], times: TrialTimes, *, slots: int, scheduler: str,
                   grace_period: int = 1, reduction_factor: float = 2) -> SweepOutcome:
    """Run one sweep in simulated time: trials start in order as slots free up; reports are decided
    in time order, as Ray sees them. `rewards` (higher is better) fixes each trial's quality."""
    if scheduler not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, but got {scheduler!r}")
    if slots < 1:
        raise ValueError(f"slots must be at least 1, but got {slots}")
    n = len(times.segments)
    milestones = asha_milestones(grace_period=grace_period, reduction_factor=reduction_factor, max_t=n + 1)
    asha_state: dict[int, list[float]] = {}
    latest: dict[int, int] = {}
    reports = [0] * len(rewards)
    events: list[tuple[float, int, int, int]] = []  # (time, order, trial, report)
    next_trial, order, busy = 0, 0, 0.0

    def time_to(report: int) -> float:
        """Seconds from the report before (or the trial's setup) to `report`; the export precedes the last."""
        return times.segments[report - 1] + (times.export if report == n else 0.0)

    def start(trial: int, at: float) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (at + times.setup + time_to(1), order, trial, 1))

    while next_trial < min(slots, len(rewards)):
        start(next_trial, 0.0)
        next_trial += 1
    end_times: list[float] = []
    started_at = {i: 0.0 for i in range(next_trial)}
    while events:
        now, _, trial, report = heapq.heappop(events)
        reports[trial] = report
        if report == n:  # the final report: the trial ends whatever a scheduler decides
            stop = True
        elif scheduler == "asha":
            stop = _asha_decide(asha_state, milestones, reduction_factor, report, rewards[trial])
        elif scheduler == "median":
            stop = _median_decide(latest, rewards, trial, report, grace_period)
        else:
            stop = False
        if not stop:
            order += 1
            heapq.heappush(events, (now + time_to(report + 1), order, trial, report + 1))
            continue
        busy += now - started_at[trial]
        end_times.append(now)
        if next_trial < len(rewards):
            started_at[next_trial] = now
            start(next_trial, now)
            next_trial += 1
    return SweepOutcome(reports=reports, wall_seconds=max(end_times, default=0.0), busy_seconds=busy)


@dataclass
class Expectation:
    """Averages over simulated sweeps."""

    trials: int
    stopped_early: float
    evaluations: float
    steps: float
    wall_seconds: float
    busy_seconds: float
    draws: int
    wall_range: tuple[float, float] = (0.0, 0.0)
    """10th and 90th percentiles of the simulated sweeps' wall seconds: which trials a scheduler stops
    is a draw, and in a small sweep one draw moves the total a lot (lora_rank, 8 trials, one ASHA rung:
    6 stopped where 4.2 were expected, 26% less wall time)."""
    steps_range: tuple[float, float] = (0.0, 0.0)
    """The same percentiles of the steps trained."""


RANGE_PERCENTILES = (10, 90)


def expected_sweep(*, num_trials: int, times: TrialTimes, eval_steps: list[int], slots: int, scheduler: str,
                   grace_period: int = 1, reduction_factor: float = 2, draws: int | None = None,
                   seed: int = 0) -> Expectation:
    """Expected trials stopped early, evaluations, optimizer steps, wall and busy seconds of a sweep,
    averaged over `draws` sweeps of random trial qualities (a fixed seed: the same plan each time)."""
    if len(eval_steps) != len(times.segments):
        raise ValueError(f"one segment per evaluation: {len(eval_steps)} evaluations, "
                         f"{len(times.segments)} segments")
    draws = draws or (1 if scheduler == "none" else max(200, 4000 // max(num_trials, 1)))
    rng = np.random.default_rng(seed)
    n = len(eval_steps)
    totals = np.zeros(5)
    walls, trained = [], []
    for _ in range(draws):
        outcome = simulate_sweep(rng.random(num_trials).tolist(), times, slots=slots, scheduler=scheduler,
                                 grace_period=grace_period, reduction_factor=reduction_factor)
        evals = outcome.reports
        steps = sum(eval_steps[e - 1] for e in evals)
        totals += (sum(r < n for r in evals), sum(evals), steps, outcome.wall_seconds, outcome.busy_seconds)
        walls.append(outcome.wall_seconds)
        trained.append(steps)
    mean = totals / draws
    low, high = RANGE_PERCENTILES
    return Expectation(trials=num_trials, stopped_early=float(mean[0]), evaluations=float(mean[1]),
                       steps=float(mean[2]), wall_seconds=float(mean[3]), busy_seconds=float(mean[4]),
                       draws=draws,
                       wall_range=(float(np.percentile(walls, low)), float(np.percentile(walls, high))),
                       steps_range=(float(np.percentile(trained, low)), float(np.percentile(trained, high))))
