"""The noise floor of a metric: how much it moves when only the evaluation seeds change.

A sweep compares trials by one number measured on a few dozen generated sprites; re-run the same model
with other sampling seeds and that number moves. The noise floor is that spread, measured on the
untuned base (the same evaluation with `eval seeds` 0, 1, 2, ...): the sample standard deviation over
seeds. It is logged on the parent run as `noise_floor_<metric>` beside `baseline_<metric>`, and two
trials whose difference is within TIE_FLOORS noise floors are ties, not winner and loser.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence

NOISE_FLOOR_PREFIX = "noise_floor_"
TIE_FLOORS = 2.0
"""Two values closer than this many noise floors are a tie. The difference of two independent
measurements has a spread of sqrt(2) floors, so 2 floors is about 1.4 of its standard deviations:
a difference inside it happens by seed alone about one time in six."""


def noise_floor(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1) of one metric's values over evaluation seeds.

    Needs at least two finite values; ValueError names what was given.
    """
    finite = [float(v) for v in values if math.isfinite(float(v))]
    if len(finite) < 2:
        raise ValueError(f"a noise floor needs the metric at 2 or more eval seeds; got {list(values)!r}")
    return statistics.stdev(finite)


def noise_floors(per_seed: Sequence[Mapping[str, float]], metrics: Iterable[str] | None = None, *,
                 prefix: str = NOISE_FLOOR_PREFIX) -> dict[str, float]:
    """{prefix + metric: noise floor} over the evaluations of one model at several seeds.

    `metrics`: which to report (default: every metric present in all evaluations). A metric that is
    not finite in at least two evaluations is left out.
    """
    if len(per_seed) < 2:
        raise ValueError(f"a noise floor needs evaluations at 2 or more eval seeds; got {len(per_seed)}")
    names = list(metrics) if metrics is not None else sorted(set.intersection(*(set(m) for m in per_seed)))
    out = {}
    for name in names:
        values = [float(m[name]) for m in per_seed if name in m and math.isfinite(float(m[name]))]
        if len(values) >= 2:
            out[prefix + name] = noise_floor(values)
    return out


def measure_noise_floor(evaluate: Callable[[int], Mapping[str, float]], seeds: Sequence[int],
                        metrics: Iterable[str] | None = None) -> dict[str, float]:
    """Run `evaluate(seed)` (one evaluation of a fixed model, e.g. the untuned base, with that eval
    seed) for every seed and return `noise_floors` of the results."""
    if len(set(seeds)) < 2:
        raise ValueError(f"a noise floor needs 2 or more distinct eval seeds; got {list(seeds)!r}")
    return noise_floors([evaluate(int(seed)) for seed in seeds], metrics)


def within_noise(value: float, best: float, floor: float, *, floors: float = TIE_FLOORS) -> bool:
    """Whether `value` ties with `best`: their difference is at most `floors` noise floors."""
    return abs(value - best) <= floors * floor
