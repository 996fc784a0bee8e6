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

Built on Tune's public `Searcher` interface and Optuna's ask-and-tell interface (no private state of
either); `save`/`restore` pickle the study with the trials in flight, so `Tuner.restore` continues it.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

from ray.tune.search import Searcher

from catsith_sweep.sweep.trainable import FAILED, FINISHED, STEP


class OptunaStudySearcher(Searcher):
    """Suggests each trial's params with `study.ask(space)`; `metric`/`mode` may be lists (multi-objective)."""

    def __init__(self, *, space: dict[str, Any], metric: str | list[str], mode: str | list[str],
                 sampler: Any) -> None:
        import optuna

        super().__init__(metric=metric, mode=mode)  # type: ignore[arg-type]  # Tune takes lists too
        self.space = space
        modes = mode if isinstance(mode, list) else [mode]
        self.study = optuna.create_study(directions=["maximize" if m == "max" else "minimize" for m in modes],
                                         sampler=sampler, pruner=optuna.pruners.NopPruner())
        self.asked: dict[str, Any] = {}
        """Ray trial id -> the Optuna trial it runs."""
        self.told: set[str] = set()

    @property
    def metrics(self) -> list[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if trial_id not in self.asked:
            self.asked[trial_id] = self.study.ask(fixed_distributions=self.space)
        return dict(self.asked[trial_id].params)

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
            pickle.dump({"study": self.study, "asked": self.asked, "told": self.told, "space": self.space}, handle)

    def restore(self, checkpoint_path: str) -> None:
        # Tune's own searcher checkpoint inside the sweep's folder (runs/ is the user's, see README).
        with open(checkpoint_path, "rb") as handle:
            state = pickle.load(handle)  # noqa: S301
        self.study, self.asked, self.told, self.space = state["study"], state["asked"], state["told"], state["space"]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
