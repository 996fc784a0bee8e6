"""Ray's OptunaSearch, told the truth about early-stopped and failed trials.

Ray's OptunaSearch reports a trial that ASHA stopped early to Optuna as COMPLETE with its partial-budget
score. Those scores are worse than finished ones only because they are earlier, so TPE would learn
"these params are bad" from budget rather than from params. Decision: a trial that did not reach its
final report is told to Optuna as PRUNED. Optuna keeps its intermediate values (one per evaluation,
reported as they arrive), and TPE ranks pruned trials by how far they got and their last value, below
the complete ones: the way Optuna's own pruners feed TPE. A trial that failed (exception, NaN) is told
as FAIL and never informs the sampler. Ray's OptunaSearch also switches Optuna's pruners off: pruning is
the Ray scheduler's job here (ASHA or median), so that is kept.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from catsith_sweep.sweep.trainable import FAILED, FINISHED, STEP


class BudgetAwareOptunaSearch(OptunaSearch):
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if result.get(FAILED) or any(not _finite(result.get(m)) for m in metrics):
            return
        if result.get(FINISHED):  # the final report repeats the last evaluation's step and values
            return
        if not isinstance(self.metric, list) and trial_id in self._ot_trials:
            self._ot_trials[trial_id].report(float(result[self.metric]), int(result.get(STEP, 0)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        study: Any = self._ot_study
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [result.get(m) for m in metrics] if result else []
        if error or not result or result.get(FAILED) or not all(_finite(v) for v in values):
            study.tell(ot_trial, state=TrialState.FAIL)
        elif not result.get(FINISHED):
            study.tell(ot_trial, state=TrialState.PRUNED)
        else:
            study.tell(ot_trial, values if len(values) > 1 else values[0])
        self._completed_trials.add(trial_id)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
