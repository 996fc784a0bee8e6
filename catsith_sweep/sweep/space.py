"""Search spaces and samplers as Optuna objects (Ray's OptunaSearch drives them)."""

from __future__ import annotations

import json
from typing import Any

from catsith_sweep.config.space import Categorical, Distribution, Fixed, FloatRange, IntRange

_SCALARS = (type(None), bool, int, float, str)


def optuna_space(space: dict[str, Distribution]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(optuna distributions, fixed values). Categorical choices that are not scalars (lists of target
    modules, say) are offered to Optuna as their JSON text and decoded by `decode_params`."""
    import optuna.distributions as od

    dists: dict[str, Any] = {}
    fixed: dict[str, Any] = {}
    for key, dist in space.items():
        if isinstance(dist, Fixed):
            fixed[key] = dist.value
        elif isinstance(dist, Categorical):
            dists[key] = od.CategoricalDistribution([encode_choice(v) for v in dist.values])
        elif isinstance(dist, IntRange):
            dists[key] = od.IntDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
        elif isinstance(dist, FloatRange):
            dists[key] = od.FloatDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
    return dists, fixed


def encode_choice(value: Any) -> Any:
    """A categorical choice as Optuna holds it: scalars as they are, anything else as `json:<text>`."""
    return value if isinstance(value, _SCALARS) else "json:" + json.dumps(value)


def decode_params(params: dict[str, Any]) -> dict[str, Any]:
    return {k: json.loads(v[5:]) if isinstance(v, str) and v.startswith("json:") else v
            for k, v in params.items()}


def make_sampler(name: str, seed: int | None) -> Any:
    import warnings

    import optuna

    def grid() -> Any:
        with warnings.catch_warnings():  # experimental since Optuna 3.1; what `grid` means is fixed here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.BruteForceSampler(seed=seed)

    samplers = {
        "grid": grid,
        # constant_liar: trials run 2+ at a time; without it TPE proposes the same region to each of them
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, constant_liar=True),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
    }
    return samplers[name]()
