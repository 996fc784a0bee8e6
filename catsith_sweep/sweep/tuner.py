"""Build (or restore) the Ray Tune `Tuner` of a sweep: the only place that assembles Ray objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catsith_sweep.config import LoadedExperiment
from catsith_sweep.sweep.callbacks import ProgressTable, TrialOutcomes, trial_dirname, trial_name
from catsith_sweep.sweep.trainable import STEP, SweepContext, trial_main


def _trainable(loaded: LoadedExperiment, context: SweepContext) -> Any:
    from ray import tune

    resources = loaded.experiment.resources
    bound = tune.with_parameters(trial_main, context=context)
    return tune.with_resources(bound, {"cpu": resources.cpu, "gpu": resources.gpu})


def _scheduler(loaded: LoadedExperiment, max_evaluations: int) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    search = loaded.experiment.search
    # One objective judges (`search.scheduler_metric`): with several, Tune's own metric is unset, so the
    # scheduler carries it; what it stops is told to Optuna as pruned, off the front (sweep/search.py).
    metric, mode = search.scheduler_objective() if len(search.metrics()) > 1 else (None, None)
    if search.scheduler == "asha":
        # Time is counted in evaluations (the only results trials send; the last one is the final
        # report); `max_evaluations` is the longest trial's (driver.budget_evaluations), and max_t one
        # more, so ASHA never stops a trial for reaching max_t.
        return ASHAScheduler(time_attr="training_iteration", max_t=max_evaluations + 1, metric=metric, mode=mode,
                             grace_period=search.grace_period, reduction_factor=search.reduction_factor)
    if search.scheduler == "median":
        return MedianStoppingRule(time_attr="training_iteration", grace_period=search.grace_period,
                                  min_samples_required=2, metric=metric, mode=mode)
    return FIFOScheduler()


def _searcher(loaded: LoadedExperiment) -> Any:
    from catsith_sweep.sweep.search import OptunaStudySearcher
    from catsith_sweep.sweep.space import make_sampler, optuna_space

    search = loaded.experiment.search
    dists, _ = optuna_space(loaded.space)  # the fixed values travel in SweepContext.fixed_params
    metrics, modes = search.metrics(), search.modes()
    if not dists:  # nothing to search: Optuna needs a space, so repeat the fixed config
        return None
    return OptunaStudySearcher(
        space=dists, metric=metrics if len(metrics) > 1 else metrics[0],
        mode=modes if len(modes) > 1 else modes[0], sampler=make_sampler(search.sampler, search.seed),
        seed=search.seed, skip_repeats=search.sampler != "random",
    )


def build_tuner(loaded: LoadedExperiment, context: SweepContext, sweep_dir: Path,
                max_evaluations: int, *, forecast: Any = None, budget: Any = None) -> tuple[Any, TrialOutcomes]:
    """`forecast` (sweep/forecast.py) feeds the table's ETA; `budget` (sweep/budget.py) limits the sweep."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    search = loaded.experiment.search
    metrics, modes = search.metrics(), search.modes()
    searcher = _searcher(loaded)
    if budget is not None:
        from catsith_sweep.sweep.budget import BudgetSearcher, BudgetStopper

        searcher = BudgetSearcher(searcher, budget)
    outcomes = TrialOutcomes(uri=context.tracking_uri, experiment_id=context.experiment_id,
                             parent_run_id=context.parent_run_id, metrics=metrics)
    table = ProgressTable(outcomes, metrics[0], list(loaded.space), forecast=forecast)
    single = len(metrics) == 1
    tune_config = tune.TuneConfig(
        search_alg=searcher, scheduler=_scheduler(loaded, max_evaluations),
        metric=metrics[0] if single else None, mode=modes[0] if single else None,
        num_samples=search.num_samples, max_concurrent_trials=search.max_concurrent_trials,
        reuse_actors=True,  # each new trial process pays ~17 s of imports; see field notes
        trial_name_creator=trial_name, trial_dirname_creator=trial_dirname,
    )
    run_config = tune.RunConfig(
        name="tune", storage_path=str(sweep_dir), verbose=0,
        # Tune's result.json (read back into its ResultGrid); its CSV and TensorBoard loggers are off (driver.py).
        callbacks=[*([forecast] if forecast is not None else []), outcomes, table, JsonLoggerCallback()],
        failure_config=tune.FailureConfig(max_failures=search.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        stop=BudgetStopper(budget) if budget is not None else None,
    )
    return tune.Tuner(_trainable(loaded, context), tune_config=tune_config, run_config=run_config), outcomes


def restore_tuner(loaded: LoadedExperiment, context: SweepContext, tune_dir: Path) -> tuple[Any, None]:
    from ray import tune

    tuner = tune.Tuner.restore(str(tune_dir), trainable=_trainable(loaded, context),
                               resume_unfinished=True, resume_errored=True, restart_errored=False)
    return tuner, None


__all__ = ["STEP", "build_tuner", "restore_tuner"]
