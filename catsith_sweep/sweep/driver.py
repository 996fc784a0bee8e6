"""`run`: an experiment as a Ray Tune sweep with Optuna search, tracked in MLflow, resumable.

Layout on disk, per experiment: `runs/<name>/<sweep id>/` holds `sweep.json` (parent run id, status,
config fingerprint) and Ray's own experiment folder `tune/`. `run` on an experiment whose latest sweep
was interrupted continues that sweep (same config) with `Tuner.restore`; `--resume` insists on it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catsith_sweep.config import LoadedExperiment
from catsith_sweep.config.fingerprint import config_fingerprint
from catsith_sweep.errors import UserInputError
from catsith_sweep.io import atomic_write_text
from catsith_sweep.sweep.ray_session import (  # noqa: F401  # init_ray: the cluster tests join with it
    RaySession,
    check_tracking_reaches_workers,
    init_ray,
    trial_env,
)
from catsith_sweep.tracking import Outcome, SweepRun, SweepStatus, TrialRow, rank
from catsith_sweep.trainers.baseline_key import git_commit

STATE_FILE = "sweep.json"


@dataclass
class SweepOutcome:
    sweep_dir: Path
    parent_run_id: str
    best: TrialRow | None
    counts: dict[Outcome, int]
    interrupted: bool = False
    baseline: dict[str, float] | None = None
    rows: list[TrialRow] = field(default_factory=list)
    """Every trial, as the leaderboard shows them."""
    metric: str = ""
    mode: str = "min"
    noise_floors: dict[str, float] = field(default_factory=dict)
    """`noise_floor_<metric>` of the baseline (see `sweep.baseline`); empty without one."""
    finishing: Finishing | None = None
    """What still runs after `run_sweep` returned with `finish_in_background` (plots, Ray's shutdown)."""

    def wait_finished(self) -> None:
        if self.finishing is not None:
            self.finishing.wait()


class Finishing:
    """The end of a sweep that need not hold up its terminal summary: the parent run's plots, drawn and
    logged in a thread (`plots`), and Ray's shutdown (already started in its own thread by the driver).
    `wait` joins both; a plot that fails is reported, since the sweep's results are complete without it."""

    def __init__(self, ray_session: RaySession, plots: Any = None, log: Any = print) -> None:
        self.ray_session, self.log = ray_session, log
        self.error: str | None = None
        self._thread: threading.Thread | None = None
        if plots is not None:
            self._thread = threading.Thread(target=self._draw, args=(plots,), name="catsith-plots", daemon=True)
            self._thread.start()

    def _draw(self, plots: Any) -> None:
        try:
            plots()
        except Exception as exc:  # noqa: BLE001 - reported by wait()
            self.error = f"{type(exc).__name__}: {exc}"

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self.error is not None:
                self.log(f"the sweep's plots failed ({self.error}); its leaderboard and runs are complete")
        self.ray_session.join()


def find_resumable(runs_dir: Path, fingerprint: str) -> Path | None:
    """The latest sweep folder of this experiment that did not finish, if its config is the same."""
    if not runs_dir.is_dir():
        return None
    for sweep_dir in sorted(runs_dir.iterdir(), reverse=True):
        state_path = sweep_dir / STATE_FILE
        if not state_path.is_file():
            continue
        state = json.loads(state_path.read_text())
        if state.get("status") == SweepStatus.FINISHED.value:
            return None
        return sweep_dir if state.get("fingerprint") == fingerprint else None
    return None


def write_state(sweep_dir: Path, **state: Any) -> None:
    path = sweep_dir / STATE_FILE
    current = json.loads(path.read_text()) if path.is_file() else {}
    atomic_write_text(path, json.dumps({**current, **state}, indent=2))


def explain_resume(uri: str, parent_run_id: str, state: dict[str, Any], log: Any) -> None:
    """Say on the parent run (tag catsith.resumed) and in the output why the sweep is continued."""
    from catsith_sweep.tracking import sweep_runs

    if state.get("status") == "interrupted":
        reason = "the previous driver was interrupted (Ctrl-C or a stop signal) and saved Ray Tune's state"
    else:
        reason = ("the previous driver stopped without recording it (killed, crashed, or its machine lost): "
                  "Ray Tune's last saved state is used; trials it had running restart from their last checkpoint")
    log(f"resuming because {reason}")
    sweep_runs.note_resume(uri, parent_run_id, f"{time.strftime('%Y-%m-%d %H:%M:%S')} {reason}")


def quiet_driver() -> None:
    """Keep Optuna's study notices out of the driver's terminal, which shows the plan, the table and
    the summary (the CLI already quiets transformers, diffusers and progress bars)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Every evaluation is a checkpoint, so Tune snapshots its state often; on a local storage path that
    # costs milliseconds, yet Tune warns about it every few seconds.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's CSV and TensorBoard result files are read by nothing here (tuner.py keeps its result.json):
    # MLflow holds every result. Its TensorBoard writer alone imports torch into the driver (3-6 s, and
    # as long again for torch's teardown at exit on a busy 2-core machine).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")


def budget_evaluations(loaded: LoadedExperiment) -> int:
    """Evaluations of the longest trial the sweep can sample, counted from the trainer's own step
    count (an epoch budget needs the dataset, so call this after `prepare`): the time limit of
    early-stopping schedulers, which must not cut a trial before its last evaluation."""
    from catsith_sweep.config import apply_params
    from catsith_sweep.trainers import planned_budget
    from catsith_sweep.trainers.surface import budget_variants

    exp = loaded.experiment
    return max(planned_budget(apply_params(exp, params) if params else exp)[1]
               for params in budget_variants(exp, loaded.space))


def run_sweep(loaded: LoadedExperiment, *, address: str | None = None, tracking_uri: str | None = None,
              resume: bool = False, runs_root: Path = Path("runs"), log: Any = print,
              finish_in_background: bool = False) -> SweepOutcome:
    """Run (or continue) the sweep of `loaded`; returns where it lives and how it went.

    Once the parent run is open, the sweep ends it whatever happens: finished; interrupted (Ctrl-C,
    SIGTERM: resumable, runs ended as KILLED); or failed (the driver's error, runs ended as FAILED/KILLED),
    each with `catsith.ended_by` saying why. Only SIGKILL can leave runs RUNNING.
    `finish_in_background`: return before the plots are logged and Ray is shut down, so the caller can
    print the summary meanwhile; it then calls `SweepOutcome.wait_finished()`.
    """
    from catsith_sweep import tracking

    started = time.time()  # the budget's wall clock and `actual_wall_seconds` count from here
    exp = loaded.experiment
    uri = tracking.normalize_uri(tracking_uri or exp.tracking_uri)
    runs_dir = (runs_root / exp.name).resolve()
    fingerprint = config_fingerprint(loaded)
    sweep_dir = find_resumable(runs_dir, fingerprint)
    if resume and sweep_dir is None:
        raise UserInputError(f"--resume: no interrupted sweep of `{exp.name}` with this same config in {runs_dir}")
    ray_session = RaySession.start(address, trial_env())  # beside the start-up below (sweep/ray_session.py)
    try:
        sweep_dir, sweep, dataset_fp, job = _start_up(loaded, uri, runs_dir, sweep_dir, fingerprint, log)
    except BaseException:
        ray_session.stop()
        raise
    try:
        with ending_runs_on_failure(uri, sweep, sweep_dir):
            outcome = _run_tuner(loaded, uri, sweep, sweep_dir, dataset_fp, ray_session, started=started,
                                 baseline_job=job, log=log)
    except BaseException:
        ray_session.stop()  # done here, never at the same time as the shutdown Ray registered for exit
        raise
    # Ray's shutdown overlaps the summary and the plots, once the tuner and its results (which hold
    # references into Ray's object store) are gone: freeing one after the shutdown ends the process.
    gc.collect()
    ray_session.stop(background=True)
    if not finish_in_background:
        outcome.wait_finished()
    return outcome


def _start_up(loaded: LoadedExperiment, uri: str, runs_dir: Path, sweep_dir: Path | None, fingerprint: str,
              log: Any) -> tuple[Path, SweepRun, str, Any]:
    """The driver's side of starting a sweep, while Ray starts: the dataset, the MLflow experiment and
    parent run, the sweep folder, the baseline job. (sweep folder, sweep run, dataset fingerprint, job):
    the fingerprint read once here, while Ray starts, serves the baseline and the trials."""
    from catsith_sweep import tracking
    from catsith_sweep.data.fingerprint import fingerprint as dataset_fingerprint
    from catsith_sweep.trainers import prepare

    exp = loaded.experiment
    quiet_driver()
    dataset_fp = dataset_fingerprint(prepare(exp, log=log))
    experiment_id = tracking.ensure_experiment(uri, exp.mlflow_experiment)
    sweep_dir, parent_run_id = _open_sweep(loaded, uri, experiment_id, runs_dir, sweep_dir, fingerprint, log)
    sweep = _sweep_run(uri, parent_run_id)
    job = None
    if "baseline" not in json.loads((sweep_dir / STATE_FILE).read_text()):
        from catsith_sweep.sweep.baseline import start_job

        job = start_job(exp, sweep_dir / "baseline", dataset_fingerprint=dataset_fp, code_version=git_commit(),
                        log=log)
    return sweep_dir, sweep, dataset_fp, job


def _open_sweep(loaded: LoadedExperiment, uri: str, experiment_id: str, runs_dir: Path, sweep_dir: Path | None,
                fingerprint: str, log: Any) -> tuple[Path, str]:
    """(sweep folder, parent run id): the interrupted sweep `sweep_dir` reopened, or a new one with its
    parent run (its baseline is evaluated beside the first trials: `sweep.baseline`)."""
    from catsith_sweep.sweep.summary import start_parent_run
    from catsith_sweep.tracking import redact_uri, sweep_runs

    if sweep_dir is not None:
        state = json.loads((sweep_dir / STATE_FILE).read_text())
        parent_run_id = state["parent_run_id"]
        log(f"continuing {state.get('status', 'unfinished')} sweep {sweep_dir.name} (same config; MLflow parent "
            f"run {parent_run_id}): Ray's saved state is unpickled from {sweep_dir / 'tune'} (runs/ must be "
            "yours alone: see README)")
        explain_resume(uri, parent_run_id, state, log)
        sweep_runs.reopen_sweep_run(uri, parent_run_id)
        write_state(sweep_dir, status=SweepStatus.RUNNING.value)
        return sweep_dir, parent_run_id
    sweep_dir = runs_dir / time.strftime("%Y%m%d-%H%M%S")
    sweep_dir.mkdir(parents=True, exist_ok=False)
    parent_run_id = start_parent_run(uri, experiment_id, loaded, sweep_dir.name)
    write_state(sweep_dir, parent_run_id=parent_run_id, status=SweepStatus.RUNNING.value, fingerprint=fingerprint,
                experiment=str(loaded.path), tracking_uri=redact_uri(uri), experiment_id=experiment_id)
    return sweep_dir, parent_run_id


def _sweep_run(uri: str, parent_run_id: str) -> SweepRun:
    from catsith_sweep.tracking import queries

    return queries.sweep_by_run_id(uri, parent_run_id)


@contextlib.contextmanager
def ending_runs_on_failure(uri: str, sweep: SweepRun, sweep_dir: Path) -> Iterator[None]:
    """On Ctrl-C, SIGTERM or an error: end the parent run and the open trial runs with what happened,
    mark `sweep.json`, and let the exception go on (the CLI reports it)."""
    from catsith_sweep.tracking import sweep_runs

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, terminate) if _main_thread() else None
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            status, why = SweepStatus.INTERRUPTED, f"interrupted ({str(exc) or 'Ctrl-C'})"
        else:
            status, why = SweepStatus.FAILED, f"driver error: {type(exc).__name__}: {exc}"
        try:
            sweep_runs.end_sweep_run(uri, sweep, status, why)
        except Exception as cleanup:  # e.g. the store is what failed: the first error is the one to see
            exc.add_note(f"also: ending the sweep's MLflow runs failed ({type(cleanup).__name__}: {cleanup})")
        write_state(sweep_dir, status=status.value, ended_by=why)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _collect_baseline(job: Any, uri: str, sweep: SweepRun, sweep_dir: Path, timeout: float | None = None,
                      log: Any = print) -> None:
    """Wait for the baseline job (if this run started one), log it on the parent run, keep it in the state."""
    from catsith_sweep.sweep.baseline import log_to_parent

    baseline = job.wait(timeout) if job is not None else None
    if job is not None and baseline is None and job.error is None:
        log("the baseline evaluation is still running: the driver ends once it is done (it is then cached)")
    if baseline is not None:
        log_to_parent(uri, sweep.run_id, baseline)
        write_state(sweep_dir, baseline=baseline.metrics, noise_floors=baseline.noise_floors)


def _run_tuner(loaded: LoadedExperiment, uri: str, sweep: SweepRun, sweep_dir: Path, dataset_fp: str,
               ray_session: RaySession, *, started: float, baseline_job: Any = None, log: Any = print) -> SweepOutcome:
    from catsith_sweep.sweep.budget import figures as budget_figures
    from catsith_sweep.sweep.summary import finish_parent_run, log_plots
    from catsith_sweep.tracking import sweep_runs

    exp = loaded.experiment
    ray_session.wait()
    check_tracking_reaches_workers(uri, ray_session.address, sweep.experiment_id)
    tuner, forecast, budget = _tuner(loaded, uri, sweep, sweep_dir, dataset_fp, started)
    threading.Thread(target=_import_plotting, name="catsith-plot-imports").start()
    results = tuner.fit()
    states = None
    if budget is not None and budget.ended_by:  # trials it stopped: KILLED in MLflow, PRUNED in Optuna
        states = budget.end_trials(uri, sweep.experiment_id, sweep.run_id)
    elif results.num_terminated + results.num_errors < len(results) or len(results) < exp.search.num_samples:
        # Ctrl-C (or a lost driver) stops Ray, which saves its state: leave the sweep resumable.
        why = "interrupted (Ctrl-C): resumable with run --resume"
        if budget is not None:
            budget.record(force=True)  # what this session spent counts against the budget when resumed
        _collect_baseline(baseline_job, uri, sweep, sweep_dir, timeout=0, log=log)
        sweep_runs.end_sweep_run(uri, sweep, SweepStatus.INTERRUPTED, why)
        write_state(sweep_dir, status=SweepStatus.INTERRUPTED.value, ended_by=why)
        return SweepOutcome(sweep_dir, sweep.run_id, None, {}, interrupted=True, finishing=Finishing(ray_session))
    sweep_runs.close_orphaned_trials(uri, sweep.experiment_id, sweep.run_id,
                                    {r.metrics.get("trial_id") for r in results})
    _collect_baseline(baseline_job, uri, sweep, sweep_dir)
    state = json.loads((sweep_dir / STATE_FILE).read_text())
    floors = state.get("noise_floors", {})
    rows, counts = finish_parent_run(uri, sweep, loaded, results, sweep_dir, plots=False,
                                     noise_floor=floors.get(f"noise_floor_{sweep.metric}"))
    finishing = Finishing(ray_session, lambda: log_plots(uri, sweep, loaded, rows, sweep_dir), log)
    record = budget_figures(forecast, budget, states)
    sweep_runs.log_sweep_figures(uri, sweep.run_id, record["metrics"], record["tags"])
    write_state(sweep_dir, figures=record)
    best = next(iter(rank(rows, sweep.metric, sweep.mode)), None)
    write_state(sweep_dir, status=SweepStatus.FINISHED.value, best=best.summary(sweep.metric) if best else None,
                counts={k.value: v for k, v in counts.items()})
    return SweepOutcome(sweep_dir, sweep.run_id, best, counts, baseline=state.get("baseline", {}), rows=rows,
                        metric=sweep.metric, mode=sweep.mode, noise_floors=floors, finishing=finishing)


def _import_plotting() -> None:
    """Import what the end-of-sweep plots need (matplotlib, Optuna's plots and the scikit-learn forest of
    its parameter importances, torch for the comparison grid) while the trials run, when the driver
    waits: after the last trial the plots then only draw (their imports took 3-7 s of a 2-core machine's
    tail). Not a daemon thread: an exit during an import waits for it rather than aborting inside torch."""
    with contextlib.suppress(ImportError):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
        import optuna.visualization.matplotlib  # noqa: F401
        import safetensors.torch  # noqa: F401
        import sklearn.ensemble  # noqa: F401

        import catsith_sweep.metrics.images  # noqa: F401


def _tuner(loaded: LoadedExperiment, uri: str, sweep: SweepRun, sweep_dir: Path, dataset_fp: str,
           started: float) -> tuple[Any, Any, Any]:
    """(tuner, forecast, budget): a new tuner, or the interrupted sweep's restored from `tune/`."""
    from catsith_sweep.plan.saved import load_plan
    from catsith_sweep.sweep import budget as budgets
    from catsith_sweep.sweep.space import optuna_space
    from catsith_sweep.sweep.summary import public_experiment
    from catsith_sweep.sweep.trainable import SweepContext
    from catsith_sweep.sweep.tuner import build_tuner, restore_tuner

    exp = loaded.experiment
    context = SweepContext(
        experiment=public_experiment(exp).model_dump(mode="json"), fixed_params=optuna_space(loaded.space)[1],
        tracking_uri=uri, experiment_id=sweep.experiment_id, parent_run_id=sweep.run_id, sweep_id=sweep_dir.name,
        git_commit=git_commit(), dataset_fingerprint=dataset_fp, env=trial_env(),
    )
    tune_dir = sweep_dir / "tune"
    forecast, budget = budgets.sweep_meters(loaded, started=started, sweep_dir=sweep_dir,
                                            plan=load_plan(sweep_dir.parent, config_fingerprint(loaded)))
    if tune_dir.is_dir() and (tune_dir / "tuner.pkl").is_file():
        # Its pickled callbacks, stopper and searcher unpickle as this session's forecast and budget (sweep/live.py)
        tuner, _ = restore_tuner(loaded, context, tune_dir)
    else:
        tuner, _ = build_tuner(loaded, context, sweep_dir, budget_evaluations(loaded), forecast=forecast,
                               budget=budget)
    return tuner, forecast, budget
