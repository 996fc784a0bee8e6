"""Pareto fronts and hypervolume of multi-objective sweeps (checked against Optuna's own WFG)."""

from __future__ import annotations

import numpy as np
import pytest

from catsith_sweep.sweep.pareto import (
    dominates,
    hypervolume,
    hypervolume_history,
    non_dominated,
    reference_point,
)


def test_front_of_quality_and_speed() -> None:
    # (sprite_kid, latency_ratio): both minimised
    points = [(0.10, 1.0), (0.12, 0.6), (0.11, 0.9), (0.15, 0.5), (0.13, 0.7), (0.12, 0.6)]
    assert non_dominated(points, ["min", "min"]) == [0, 1, 2, 3, 5]  # (0.13, 0.7) loses to (0.12, 0.6)
    assert dominates((0.12, 0.6), (0.13, 0.7), ["min", "min"])
    assert not dominates((0.12, 0.6), (0.12, 0.6), ["min", "min"])
    # a maximised objective flips the order
    assert non_dominated([(0.9, 1.0), (0.8, 0.5)], ["max", "min"]) == [0, 1]
    assert non_dominated([(0.9, 0.5), (0.8, 0.6)], ["max", "min"]) == [0]


def test_hypervolume_by_hand() -> None:
    assert hypervolume([(1.0, 1.0)], (2.0, 2.0), ["min", "min"]) == 1.0
    assert hypervolume([(0.0, 1.0), (1.0, 0.0)], (2.0, 2.0), ["min", "min"]) == 3.0
    assert hypervolume([(3.0, 0.0)], (2.0, 2.0), ["min", "min"]) == 0.0  # does not beat the reference
    assert hypervolume([(0.9, 0.5)], (0.5, 1.0), ["max", "min"]) == pytest.approx(0.2)


@pytest.mark.parametrize("dims", [2, 3])
def test_hypervolume_agrees_with_optuna(dims: int) -> None:
    from optuna._hypervolume import compute_hypervolume

    rng = np.random.default_rng(dims)
    points = rng.random((12, dims))
    ref = np.full(dims, 1.1)
    expected = compute_hypervolume(points, ref)
    assert hypervolume(points.tolist(), ref.tolist(), ["min"] * dims) == pytest.approx(expected, rel=1e-9)


def test_history_never_decreases_and_reference_is_beaten_by_all() -> None:
    points = [(0.2, 0.9), (0.25, 0.5), (0.3, 0.95), (0.18, 0.7)]
    ref = reference_point(points, ["min", "min"])
    assert all(dominates(p, ref, ["min", "min"]) for p in points)
    history = hypervolume_history(points, ["min", "min"])
    assert history == sorted(history) and history[2] == history[1] and history[3] > history[2]
    with pytest.raises(ValueError, match="at least one point"):
        reference_point([], ["min"])
