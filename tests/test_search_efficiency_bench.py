"""bench/search_efficiency.py's figures on hand-made trials, and its experiments against the schema."""

from __future__ import annotations

import importlib.util
import itertools
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

from catsith_sweep.config import load_experiment

BENCH = Path(__file__).resolve().parent.parent / "bench" / "search_efficiency.py"


@pytest.fixture(scope="module")
def bench() -> Any:
    spec = importlib.util.spec_from_file_location("search_efficiency", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["search_efficiency"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _trial(bench: Any, name: str, start: float, end: float, metric: float | None, *,
           stopped: bool = False) -> Any:
    """A trial that logs one step per second from start + 1 to end."""
    return bench.TrialCompute(name=name, start=start, end=end, metric=metric, stopped_early=stopped,
                              step_times=tuple(float(t) for t in range(int(start) + 1, int(end) + 1)))


def test_compute_to_reach_counts_everything_spent_when_the_first_trial_at_target_ended(bench: Any) -> None:
    trials = [
        _trial(bench, "late but best", 10, 20, 9.0),
        _trial(bench, "first at target", 0, 10, 10.4),
        _trial(bench, "stopped early", 0, 4, None, stopped=True),
        _trial(bench, "running meanwhile", 4, 14, 12.0),
    ]
    best = bench.best_value(trials, "min")
    assert best == 9.0
    target = bench.target_value(10.0, "min", 0.05)
    assert target == pytest.approx(10.5)
    reach = bench.compute_to_reach(trials, target, "min")
    assert reach is not None and reach.trial.name == "first at target"
    # at t=10: 10 + 4 steps of the ended trials, 6 of the one still running, none of the one not started
    assert reach.spent == bench.Compute(steps=20, seconds=20.0)
    assert bench.total(trials) == bench.Compute(steps=34, seconds=34.0)
    # a tighter target only the late trial meets: everything had been spent by then
    late = bench.compute_to_reach(trials, bench.target_value(9.0, "min", 0.05), "min")
    assert late is not None and late.trial.name == "late but best" and late.spent == bench.total(trials)
    assert bench.compute_to_reach(trials, 5.0, "min") is None


def test_target_side_follows_the_mode(bench: Any) -> None:
    assert bench.target_value(0.8, "max", 0.05) == pytest.approx(0.76)
    assert bench.target_value(-2.0, "min", 0.05) == pytest.approx(-1.9)
    assert bench.at_target(0.77, 0.76, "max") and not bench.at_target(0.75, 0.76, "max")
    assert not bench.at_target(None, 0.76, "max")


@pytest.mark.parametrize("costs,reaches", [
    ([1.0, 1.0, 1.0, 1.0], [True, False, False, False]),
    ([1.0, 2.0, 3.0], [True, False, False]),
    ([5.0, 1.0, 2.0, 7.0, 3.0], [False, True, False, True, False]),
])
def test_expected_random_order_matches_every_permutation(bench: Any, costs: list[float],
                                                         reaches: list[bool]) -> None:
    def spent(order: tuple[int, ...]) -> float:
        out = 0.0
        for i in order:
            out += costs[i]
            if reaches[i]:
                return out
        raise AssertionError("no trial reaches the target")

    brute = statistics.fmean(spent(order) for order in itertools.permutations(range(len(costs))))
    assert bench.expected_in_random_order(costs, reaches) == pytest.approx(brute)
    assert bench.expected_in_random_order(costs, [False] * len(costs)) == math.inf


@pytest.mark.parametrize("evaluations,grace,factor,rungs", [
    (4, 1, 2, [1, 2, 4]),  # the last rung is the final evaluation
    (4, 1, 3, [1, 3]),
    (4, 2, 3, [2]),
    (8, 1, 2, [1, 2, 4, 8]),
])
def test_asha_rungs_as_ray_sets_them(bench: Any, evaluations: int, grace: int, factor: int,
                                     rungs: list[int]) -> None:
    assert bench.asha_rungs(evaluations, grace, factor) == rungs


@pytest.mark.parametrize("keys,trials", [
    ({"sampler": "grid", "scheduler": "none", "seed": 0, "num_samples": 6}, 6),
    ({"sampler": "tpe", "scheduler": "asha", "seed": 3, "num_samples": 4, "grace_period": 1}, 4),
])
def test_bench_experiments_validate(bench: Any, tmp_path: Path, keys: dict[str, Any], trials: int) -> None:
    search = bench.search_yaml([2, 8], [1e-3, 3e-3, 1e-2], max_concurrent_trials=2, **keys)
    path = tmp_path / "exp.yaml"
    path.write_text(bench.experiment_yaml("search_x", "builtin:catsith-tiny", bench.TINY, 40, 10, search))
    loaded = load_experiment(path)
    assert loaded.experiment.search.sampler == keys["sampler"]
    assert loaded.experiment.search.num_samples == trials
    assert loaded.experiment.tracking.log_every_n_steps == 1  # one loss entry per step: the step count
    assert loaded.space["train.learning_rate"].candidate_values() == [1e-3, 3e-3, 1e-2]
