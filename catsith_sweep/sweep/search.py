"""A Ray Tune searcher that asks an Optuna study, and tells it the truth about early-stopped and failed trials.

Ray's own OptunaSearch reports a trial that ASHA stopped early to Optuna as COMPLETE with its
partial-budget score. Those scores are worse than finished ones only because they are earlier, so TPE
would learn "these params are bad" from budget rather than from params. Decision: a trial that did not
reach its final report is told to Optuna as PRUNED. Optuna keeps its intermediate values (one per
evaluation, reported as they arrive), and TPE ranks pruned trials by how far they got and their last
value, below the complete ones: the way Optuna's own pruners feed TPE. A trial that failed (exception,
NaN) is told as FAIL and never informs the sampler. The study has no pruner: pruning is the Ray
scheduler's job here (ASHA or median).

Multi-objective sweeps (`search.metric: [a, b, ...]`, NSGA-II or TPE): Optuna takes no intermediate
values and no pruning for several objectives, so only the final report counts. Early stopping still
exists, decided by Ray's scheduler on one named objective (`search.scheduler_metric`, default the first;
sweep/tuner.py). Decision: a trial it stopped is told as PRUNED with no values, like above, so a
partial-budget point never reaches the Pareto front (`study.best_trials`, sweep/multi.py) nor NSGA-II's
population (which reads complete trials only); TPE ranks such trials after every complete one. A failed
trial, or one missing any objective, is FAIL. Only a finished trial is told its values, in `metric` order.

Repeats: TPE's first trials are random and Optuna does not avoid params it has already asked for (in
the search bench, seed 0 proposed one rank/lr combination three times in six trials). A trial whose
params equal an earlier trial's (asked in this study, running or ended) is told as FAIL, marked
`catsith_repeat_of`, and the sampler is asked again; after `REPEAT_ASKS` repeats a combination not
yet tried is drawn at random from a finite space (all choices categorical or stepped) and enqueued.
Only when every combination has been tried does a trial rerun one (a second seed of it is a real
measurement then). FAIL keeps the repeat out of every sampler's model and of `best_trials`. Not for
`sampler: random` (`skip_repeats=False`): independent draws, repeats included, are what it promises.

Built on Tune's public `Searcher` interface and Optuna's ask-and-tell interface (no private state of
either); `save`/`restore` pickle the study with the trials in flight, so `Tuner.restore` continues it.
"""

from __future__ import annotations

import itertools
import math
import pickle
import random
from typing import Any

from ray.tune.search import Searcher

from catsith_sweep.sweep.trainable import FAILED, FINISHED, STEP

REPEAT_ASKS = 8
"""Sampler proposals that repeat an earlier trial's params before an untried one is drawn at random."""
REPEAT_ATTR = "catsith_repeat_of"
MAX_ENUMERATED = 100_000
"""Largest finite space whose untried combinations are listed."""


class OptunaStudySearcher(Searcher):
    """Suggests each trial's params with `study.ask(space)`; `metric`/`mode` may be lists (multi-objective)."""

    def __init__(self, *, space: dict[str, Any], metric: str | list[str], mode: str | list[str],
                 sampler: Any, seed: int | None = None, skip_repeats: bool = True) -> None:
        import optuna

        super().__init__(metric=metric, mode=mode)  # type: ignore[arg-type]  # Tune takes lists too
        self.space = space
        modes = mode if isinstance(mode, list) else [mode]
        self.study = optuna.create_study(directions=["maximize" if m == "max" else "minimize" for m in modes],
                                         sampler=sampler, pruner=optuna.pruners.NopPruner())
        self.asked: dict[str, Any] = {}
        """Ray trial id -> the Optuna trial it runs."""
        self.told: set[str] = set()
        self.skip_repeats = skip_repeats
        self.rng = random.Random(seed)
        """Draws untried combinations once the sampler keeps repeating itself."""

    @property
    def metrics(self) -> list[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if trial_id not in self.asked:
            self.asked[trial_id] = self._ask_untried()
        return dict(self.asked[trial_id].params)

    def _ask_untried(self) -> Any:
        """An Optuna trial whose params no earlier trial had, while the space has such params left."""
        from optuna.trial import TrialState

        tried = {_key(t.params): t.number for t in self.study.get_trials(deepcopy=False)
                 if REPEAT_ATTR not in t.user_attrs and t.params}
        values = _finite_values(self.space)  # None: a continuous range
        size = None if values is None else math.prod(len(v) for v in values.values())
        if not self.skip_repeats or (size is not None and len(tried) >= size):
            return self.study.ask(fixed_distributions=self.space)  # every combination tried: repeat
        for attempt in range(REPEAT_ASKS + 1):
            if attempt == REPEAT_ASKS:  # the sampler keeps repeating: list what is left only now
                untried = _untried_combinations(values, set(tried)) if values is not None else None
                if not untried:
                    break  # nothing to draw from: let the sampler repeat
                self.study.enqueue_trial(self.rng.choice(untried))
            trial = self.study.ask(fixed_distributions=self.space)
            earlier = tried.get(_key(trial.params))
            if earlier is None:
                return trial
            trial.set_user_attr(REPEAT_ATTR, earlier)
            self.study.tell(trial, state=TrialState.FAIL)
        return self.study.ask(fixed_distributions=self.space)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if len(self.metrics) > 1 or trial_id not in self.asked or trial_id in self.told:
            return  # Optuna takes intermediate values for one objective only (see the module docstring)
        if result.get(FAILED):
            return
        value = result.get(self.metrics[0])
        if isinstance(value, int | float) and _finite(value):
            self.asked[trial_id].report(float(value), int(result.get(STEP, 0)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        if trial_id in self.told or trial_id not in self.asked:
            return
        trial = self.asked[trial_id]
        values = [result.get(m) for m in self.metrics] if result else []
        finite = [float(v) for v in values if isinstance(v, int | float) and _finite(v)]
        try:
            if error or not result or result.get(FAILED) or len(finite) < len(self.metrics):
                self.study.tell(trial, state=TrialState.FAIL)
            elif not result.get(FINISHED):
                self.study.tell(trial, state=TrialState.PRUNED)
            else:
                self.study.tell(trial, finite if len(finite) > 1 else finite[0])
        except RuntimeError as exc:
            # The grid sampler calls `study.stop()` once the grid is covered, which only works inside
            # `study.optimize`; tell has recorded the trial by then (in its `finally`). Tune's
            # num_samples ends the sweep instead.
            if "Study.stop" not in str(exc):
                raise
        self.told.add(trial_id)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump({"study": self.study, "asked": self.asked, "told": self.told, "space": self.space,
                         "rng": self.rng.getstate()}, handle)

    def restore(self, checkpoint_path: str) -> None:
        # Tune's own searcher checkpoint inside the sweep's folder (runs/ is the user's, see README).
        with open(checkpoint_path, "rb") as handle:
            state = pickle.load(handle)  # noqa: S301
        self.study, self.asked, self.told, self.space = state["study"], state["asked"], state["told"], state["space"]
        if "rng" in state:  # searcher checkpoints written before repeats were skipped have none
            self.rng.setstate(state["rng"])


def _key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((name, _canonical(value)) for name, value in params.items()))


def _canonical(value: Any) -> str:
    """A value as a key: floats to 12 significant digits, so a stepped float Optuna sampled (0.7) and
    the same grid point listed as low + i * step (0.7000000000000001) are one combination."""
    return repr(float(f"{value:.12g}")) if isinstance(value, float) else repr(value)


def _finite_values(space: dict[str, Any]) -> dict[str, list[Any]] | None:
    """Each parameter's values when all are finite (categorical, stepped int/float); else None."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    values: dict[str, list[Any]] = {}
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            values[name] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            values[name] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            count = int(round((dist.high - dist.low) / dist.step)) + 1
            values[name] = [dist.low + i * dist.step for i in range(count)]
        else:
            return None
    return values


def _untried_combinations(values: dict[str, list[Any]], tried: set[tuple]) -> list[dict[str, Any]] | None:
    """The combinations of a finite space's `values` (`_finite_values`) not in `tried`; None when the
    space is too large to list."""
    if math.prod(len(v) for v in values.values()) > MAX_ENUMERATED:
        return None  # a space this large rarely repeats; not worth listing
    names = sorted(values)
    combos = (dict(zip(names, combo, strict=True)) for combo in itertools.product(*(values[n] for n in names)))
    return [combo for combo in combos if _key(combo) not in tried]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
