"""What Optuna is told about each kind of trial end (no Ray cluster needed: the searcher is driven
directly, as Tune drives it)."""

from __future__ import annotations

import warnings

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from catsith_sweep.sweep.search import OptunaStudySearcher
from catsith_sweep.sweep.trainable import FAILED, FINISHED, STEP


def _searcher() -> OptunaStudySearcher:
    return OptunaStudySearcher(space={"lr": FloatDistribution(1e-4, 1e-2, log=True)}, metric="fid",
                                   mode="min", sampler=optuna.samplers.RandomSampler(seed=0))


def _report(searcher: OptunaStudySearcher, trial_id: str, values: list[float], *, finished: bool) -> dict:
    result: dict = {}
    for i, value in enumerate(values):
        last = i == len(values) - 1
        # run_trial sends the last evaluation once, as the final report (FINISHED) of a trial that ran
        # its whole budget
        result = {"fid": value, STEP: 10 * (i + 1), FINISHED: last and finished, FAILED: False}
        searcher.on_trial_result(trial_id, result)
    return result


def test_trial_ends_are_told_truthfully() -> None:
    searcher = _searcher()
    for trial_id in ("done", "stopped", "failed", "nan"):
        assert "lr" in searcher.suggest(trial_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Optuna's "step already reported" warning
        searcher.on_trial_complete("done", _report(searcher, "done", [5.0, 4.0], finished=True))
        # ASHA stopped it after one evaluation: Ray would tell Optuna COMPLETE with this partial score.
        searcher.on_trial_complete("stopped", _report(searcher, "stopped", [3.0], finished=False))
        searcher.on_trial_complete("failed", {"fid": 1.0, FAILED: True}, error=True)
        searcher.on_trial_complete("nan", _report(searcher, "nan", [float("nan")], finished=True))
    trials = {t.number: t for t in searcher.study.trials}
    done, stopped, failed, nan = (trials[i] for i in range(4))
    assert done.state == TrialState.COMPLETE and done.value == 4.0
    assert done.intermediate_values == {10: 5.0, 20: 4.0}
    assert stopped.state == TrialState.PRUNED and stopped.intermediate_values == {10: 3.0}
    assert failed.state == TrialState.FAIL
    assert nan.state == TrialState.FAIL and nan.intermediate_values == {}
    # Completing twice (Tune may call again on restore) changes nothing.
    searcher.on_trial_complete("done", {"fid": 0.1, STEP: 30, FINISHED: True, FAILED: False})
    assert searcher.study.trials[0].value == 4.0


def test_unknown_trial_is_ignored() -> None:
    searcher = _searcher()
    searcher.suggest("a")
    searcher.on_trial_result("never-suggested", {"fid": 1.0, STEP: 10, FINISHED: False, FAILED: False})
    searcher.on_trial_complete("never-suggested", {"fid": 1.0, FINISHED: True, FAILED: False})
    [only] = searcher.study.trials
    assert only.state == TrialState.RUNNING and only.intermediate_values == {}


@pytest.mark.parametrize("finished", [True, False])
def test_best_value_ignores_pruned_partial_scores(finished: bool) -> None:
    searcher = _searcher()
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.on_trial_complete("a", _report(searcher, "a", [6.0, 5.0], finished=True))
    # b's partial score is better, but it only counts as a finished trial's value when it finished.
    searcher.on_trial_complete("b", _report(searcher, "b", [2.0], finished=finished))
    assert searcher.study.best_value == (2.0 if finished else 5.0)


def test_grid_sampler_covers_every_combination_once() -> None:
    from optuna.distributions import CategoricalDistribution

    from catsith_sweep.sweep.space import make_sampler

    space = {"rank": CategoricalDistribution([2, 4, 8]), "lr": CategoricalDistribution([1e-3, 1e-2])}
    searcher = OptunaStudySearcher(space=space, metric="fid", mode="min", sampler=make_sampler("grid", 0))
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(6):  # two in flight at a time, as a sweep with max_concurrent_trials 2 asks
            seen.append(tuple(searcher.suggest(f"t{i}").values()))
            if i:  # the grid sampler stops its study once covered: told anyway, nothing raised
                searcher.on_trial_complete(f"t{i - 1}", _report(searcher, f"t{i - 1}", [float(i)], finished=True))
        searcher.on_trial_complete("t5", _report(searcher, "t5", [0.5], finished=True))
    assert len(set(seen)) == 6
    assert [t.state for t in searcher.study.trials] == [TrialState.COMPLETE] * 6
    assert searcher.study.best_value == 0.5


@pytest.mark.parametrize("sampler_seed", range(5))
def test_params_are_not_repeated_while_untried_combinations_remain(sampler_seed: int) -> None:
    from optuna.distributions import CategoricalDistribution

    from catsith_sweep.sweep.search import REPEAT_ATTR

    space = {"rank": CategoricalDistribution([4, 16]), "lr": CategoricalDistribution([1e-4, 5e-4, 2e-3])}
    # A random sampler repeats one of 6 combinations within 6 draws with probability 1 - 6!/6**6 = 0.98.
    searcher = OptunaStudySearcher(space=space, metric="fid", mode="min",
                                   sampler=optuna.samplers.TPESampler(seed=sampler_seed), seed=sampler_seed)
    seen = []
    for i in range(6):
        seen.append(tuple(sorted(searcher.suggest(f"t{i}").items())))
        if i % 2:  # two in flight at a time; the earlier of them ends
            searcher.on_trial_complete(f"t{i - 1}", _report(searcher, f"t{i - 1}", [float(i)], finished=True))
    assert len(set(seen)) == 6
    repeats = [t for t in searcher.study.trials if REPEAT_ATTR in t.user_attrs]
    assert all(t.state == TrialState.FAIL for t in repeats)
    # Every combination tried: a seventh trial reruns one rather than failing.
    assert tuple(sorted(searcher.suggest("t6").items())) in set(seen)


def test_repeat_skipping_survives_save_and_restore(tmp_path) -> None:
    from optuna.distributions import CategoricalDistribution

    space = {"rank": CategoricalDistribution([4, 16, 32])}
    searcher = OptunaStudySearcher(space=space, metric="fid", mode="min",
                                   sampler=optuna.samplers.RandomSampler(seed=0), seed=0)
    first = searcher.suggest("a")["rank"]
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = OptunaStudySearcher(space=space, metric="fid", mode="min",
                                   sampler=optuna.samplers.RandomSampler(seed=1), seed=1)
    restored.restore(str(tmp_path / "searcher.pkl"))
    later = {restored.suggest(name)["rank"] for name in ("b", "c")}
    assert later == {4, 16, 32} - {first}


def test_a_stepped_float_space_is_exhausted_when_every_grid_point_was_tried() -> None:
    """Optuna samples 0.1..0.7 step 0.1 as 0.7; the grid lists 0.1 + 6 * 0.1 = 0.7000000000000001.
    Both are one combination, so after all 7 the space counts as exhausted (not 1 untried left)."""
    from catsith_sweep.sweep.search import _finite_values, _key, _untried_combinations

    space = {"x": FloatDistribution(0.1, 0.7, step=0.1)}
    searcher = OptunaStudySearcher(space=space, metric="fid", mode="min",
                                   sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for i in range(7):
        seen.append(searcher.suggest(f"t{i}")["x"])
        searcher.on_trial_complete(f"t{i}", _report(searcher, f"t{i}", [float(i)], finished=True))
    assert sorted(round(x, 9) for x in seen) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    values = _finite_values(space)
    assert values is not None and _untried_combinations(values, {_key({"x": x}) for x in seen}) == []
