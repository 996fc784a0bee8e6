"""Pareto fronts of multi-objective sweeps: which trials are non-dominated, and the hypervolume they cover.

Plain functions over rows of objective values, each direction `min` or `max`. Only trials that finished
their whole budget belong here: a trial stopped early (or failed) has partial-budget values that would
look like trade-offs they are not (see sweep/search.py).

The hypervolume is exact (slicing objectives one at a time, HSO), which is quick for the few dozen
trials and two or three objectives of a sweep. It is measured against a reference point that every
counted trial must beat; `reference_point` takes the worst value seen on each objective and moves it 10%
of the range further out, so the same sweep gives comparable numbers after each trial.
"""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, ...]


def _as_min(point: Sequence[float], modes: Sequence[str]) -> Point:
    """Flip `max` objectives so that smaller is better on every axis."""
    return tuple(-v if m == "max" else v for v, m in zip(point, modes, strict=True))


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """`a` is at least as good as `b` on every objective and better on one."""
    pa, pb = _as_min(a, modes), _as_min(b, modes)
    return all(x <= y for x, y in zip(pa, pb, strict=True)) and any(x < y for x, y in zip(pa, pb, strict=True))


def non_dominated(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices of the points no other point dominates, in input order (ties are all kept)."""
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, modes) for j, q in enumerate(points) if j != i)]


def reference_point(points: Sequence[Sequence[float]], modes: Sequence[str], *, margin: float = 0.1) -> Point:
    """A point every one of `points` dominates: the worst value per objective, pushed `margin` of the
    range (or of the value, when the range is zero) further out."""
    if not points:
        raise ValueError("a reference point needs at least one point")
    ref = []
    for axis, mode in enumerate(modes):
        values = [p[axis] for p in points]
        worst, best = (max(values), min(values)) if mode == "min" else (min(values), max(values))
        pad = margin * (abs(worst - best) or abs(worst) or 1.0)
        ref.append(worst + pad if mode == "min" else worst - pad)
    return tuple(ref)


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float], modes: Sequence[str]) -> float:
    """The volume dominated by `points` and bounded by `reference` (points not beating it add nothing)."""
    ref = _as_min(reference, modes)
    pts = [p for p in (_as_min(q, modes) for q in points) if all(x < r for x, r in zip(p, ref, strict=True))]
    return _hso(pts, ref)


def _hso(points: list[Point], ref: Point) -> float:
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    # Slice along the first objective: between consecutive values, the points at or below the slice
    # dominate a (d-1)-dimensional volume of the remaining objectives.
    ordered = sorted(points, key=lambda p: p[0])
    volume = 0.0
    for i, point in enumerate(ordered):
        upper = ordered[i + 1][0] if i + 1 < len(ordered) else ref[0]
        if upper > point[0]:
            volume += (upper - point[0]) * _hso([p[1:] for p in ordered[: i + 1]], ref[1:])
    return volume


def hypervolume_history(points: Sequence[Sequence[float]], modes: Sequence[str],
                        reference: Sequence[float] | None = None) -> list[float]:
    """Hypervolume after each point in order (trials in the order they finished), against one reference."""
    ref = tuple(reference) if reference is not None else reference_point(points, modes)
    history = []
    for i in range(len(points)):
        # Over the front alone: a dominated newcomer leaves it, so the volume stays exactly the same
        # (summing the slices of a different point set could round it a few ulps lower).
        seen = points[: i + 1]
        history.append(hypervolume([seen[j] for j in non_dominated(seen, modes)], ref, modes))
    return history
