"""`search.budget`: limits on a whole sweep (wall minutes, compute hours, dollars).

Three pieces share one `SweepBudget`, all in the driver:

- `BudgetSearcher` wraps the sweep's searcher: it answers Tune's request for the next trial with
  `Searcher.FINISHED` once the forecast (`forecast.SweepForecast.trial_seconds`: the plan's full trial,
  then the mean of the trials that ended) says one more trial would not fit in what is left.
- `BudgetStopper` (a Tune `Stopper`) ends the whole experiment the moment a limit is reached: Tune
  checks `stop_all` on every step of its loop (about every 0.1 s), so the trials stop within a second.
  The wall limit is aimed `RESERVE_S` early, to leave the summary its time.
- `SweepBudget.end_trials` after `fit`: Tune stops trials this way without telling the searcher or the
  callbacks, so the driver ends their MLflow runs as KILLED (`catsith.ended_by` says which limit) and
  tells Optuna they were PRUNED. Each keeps its last evaluation's checkpoint in Ray's trial folder.

Compute is trial time times each trial's share (`resources.gpu`, or `resources.cpu` when trials use no
GPU); dollars are compute hours times `search.budget.cost_per_hour`.

A resumed sweep keeps its budget: `BudgetLedger` (`budget_ledger.json` in the sweep's folder, written
atomically every few seconds and at the end of each driver session) holds the wall seconds and compute
hours each session spent, and the limits count the earlier sessions' plus this one's. The budget and
forecast Tune pickles with the tuner are pickled by name (sweep/live.py): a resumed sweep's Tune objects
are this session's, with this session's clock, never the first session's start.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ray.tune import Stopper
from ray.tune.search import Searcher

from catsith_sweep.io import atomic_write_text
from catsith_sweep.progress import fmt_seconds
from catsith_sweep.sweep.forecast import SweepForecast
from catsith_sweep.sweep.live import Live, register

RESERVE_S = 8.0
"""The wall limit stops trials this much early: stopping them and the summary (leaderboard, plots)
took 3-6 s on a 2-core CPU (tests/test_budget.py prints it)."""
LEDGER_FILE = "budget_ledger.json"
LEDGER_EVERY_S = 5.0
"""How often the ledger is rewritten while trials run: a driver killed outright loses at most this much."""


class BudgetLedger:
    """What each driver session of one sweep spent (wall seconds, compute hours), in `budget_ledger.json`."""

    def __init__(self, path: Path, session: str) -> None:
        self.path, self.session = path, session
        sessions = self._read()
        self.earlier_wall_s = sum(v["wall_seconds"] for k, v in sessions.items() if k != session)
        self.earlier_compute_h = sum(v["compute_hours"] for k, v in sessions.items() if k != session)
        self._written = 0.0

    def _read(self) -> dict[str, dict[str, float]]:
        if not self.path.is_file():
            return {}
        return dict(json.loads(self.path.read_text())["sessions"])

    def record(self, wall_s: float, compute_h: float, *, now: float | None = None, force: bool = False) -> None:
        """This session's spend so far (rewritten at most every `LEDGER_EVERY_S` unless `force`)."""
        now = now or time.time()
        if not force and now - self._written < LEDGER_EVERY_S:
            return
        sessions = {**self._read(), self.session: {"wall_seconds": wall_s, "compute_hours": compute_h}}
        atomic_write_text(self.path, json.dumps({"sessions": sessions}, indent=2))
        self._written = now


class SweepBudget(Live):
    """The sweep's limits, checked against the forecast's clock and compute plus what earlier driver
    sessions of the sweep spent (`ledger`)."""

    def __init__(self, section: Any, forecast: SweepForecast, *, reserve_s: float = RESERVE_S,
                 ledger: BudgetLedger | None = None) -> None:
        self.wall_s = section.wall_minutes * 60 if section.wall_minutes else None
        hours = [h for h in (section.compute_hours,
                             section.cost_usd / section.cost_per_hour if section.cost_usd else None) if h]
        self.compute_h = min(hours) if hours else None
        self.section, self.forecast, self.reserve_s, self.ledger = section, forecast, reserve_s, ledger
        self.reached: str | None = None
        """Why the budget ended the sweep, once it did."""
        self.refused: str | None = None
        """Why no more trials were started, once that happened."""
        self.searcher: Any = None
        """The `BudgetSearcher` once the tuner is built."""

    def _limit_names(self) -> str:
        s = self.section
        if s.cost_usd and (not s.compute_hours or s.cost_usd / s.cost_per_hour <= s.compute_hours):
            return f"cost_usd {s.cost_usd:g} (at ${s.cost_per_hour:g} per compute hour)"
        return f"compute_hours {s.compute_hours:g}"

    def elapsed_s(self, now: float | None = None) -> float:
        """Wall seconds of the whole sweep: earlier driver sessions' and this one's."""
        return (self.ledger.earlier_wall_s if self.ledger else 0.0) + self.forecast.elapsed_s(now)

    def compute_hours(self, now: float | None = None) -> float:
        """Compute hours of the whole sweep: earlier driver sessions' and this one's."""
        return (self.ledger.earlier_compute_h if self.ledger else 0.0) + self.forecast.compute_hours(now)

    def record(self, now: float | None = None, *, force: bool = False) -> None:
        """Write this session's spend into the ledger (throttled unless `force`)."""
        if self.ledger is not None:
            now = now or time.time()
            self.ledger.record(self.forecast.elapsed_s(now), self.forecast.compute_hours(now), now=now, force=force)

    def check(self, now: float | None = None) -> str | None:
        """The reason the sweep must stop now, or None. Remembered once reached."""
        if self.reached:
            return self.reached
        now = now or time.time()
        self.record(now)
        elapsed = self.elapsed_s(now)
        earlier = f", {fmt_seconds(self.ledger.earlier_wall_s)} of it before this resume" if (
            self.ledger and self.ledger.earlier_wall_s) else ""
        if self.wall_s is not None and elapsed >= self.wall_s - self.reserve_s:
            self.reached = (f"budget: search.budget.wall_minutes {self.section.wall_minutes:g} reached "
                            f"({fmt_seconds(elapsed)} elapsed{earlier}, {self.reserve_s:g} s kept for the summary)")
        elif self.compute_h is not None and (used := self.compute_hours(now)) >= self.compute_h:
            self.reached = f"budget: search.budget.{self._limit_names()} reached ({used:.4f} compute hours)"
        return self.reached

    def refuse_new_trial(self, now: float | None = None) -> str | None:
        """Why a new trial must not start (it would not fit), or None."""
        if self.refused or self.check(now):
            return self.refused or self.reached
        now = now or time.time()
        trial_s = self.forecast.trial_seconds()
        if trial_s is None:  # nothing known yet: the first trials always start
            return None
        if self.wall_s is not None:
            end = self.elapsed_s(now) + trial_s + self.reserve_s
            if end > self.wall_s:
                self.refused = (f"budget: a trial takes about {fmt_seconds(trial_s)}; it would end at "
                                f"{fmt_seconds(end)}, past search.budget.wall_minutes {self.section.wall_minutes:g}")
        if self.compute_h is not None and not self.refused:
            running = [now - s for t, s in self.forecast.begun.items() if t not in self.forecast.ended]
            owed = sum(max(0.0, trial_s - e) for e in running) + trial_s
            need = self.compute_hours(now) + owed * self.forecast.units_per_trial / 3600
            if need > self.compute_h:
                self.refused = (f"budget: one more trial would bring compute to {need:.4f} h, past "
                                f"search.budget.{self._limit_names()}")
        return self.refused

    @property
    def ended_by(self) -> str | None:
        return self.reached or self.refused

    def end_trials(self, uri: str, experiment_id: str, parent_run_id: str) -> dict[str, int]:
        """After `fit`: trials the budget stopped end as KILLED in MLflow (with the reason) and PRUNED in
        Optuna. Returns the Optuna study's trial count per state."""
        from catsith_sweep.tracking.sweep_runs import end_open_trials

        why = self.ended_by or "budget"
        end_open_trials(uri, experiment_id, parent_run_id, why)
        return prune_untold(self.searcher.searcher if self.searcher is not None else None)


def prune_untold(searcher: Any) -> dict[str, int]:
    """Tell the Optuna study every trial it asked for and never heard the end of as PRUNED; its count of
    trials per state (empty when the sweep has no Optuna study)."""
    study = getattr(searcher, "study", None)
    if study is None:
        return {}
    from optuna.trial import TrialState

    for trial_id, trial in searcher.asked.items():
        if trial_id not in searcher.told:
            study.tell(trial, state=TrialState.PRUNED)
            searcher.told.add(trial_id)
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    return states


class FixedConfig(Searcher):
    """With nothing to search, every trial runs the experiment as it is (the `fixed` keys apply)."""

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        return {}

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return True

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb"):
            pass

    def restore(self, checkpoint_path: str) -> None:
        return None


class BudgetSearcher(Searcher):
    """The sweep's searcher until the budget refuses a new trial (Tune's ConcurrencyLimiter pattern:
    Tune finds the wrapped one under `searcher` and saves it itself)."""

    def __init__(self, searcher: Any, budget: SweepBudget) -> None:
        inner = searcher if searcher is not None else FixedConfig()
        super().__init__(metric=inner.metric, mode=inner.mode)
        self.searcher, self.budget = inner, budget
        budget.searcher = self

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return bool(self.searcher.set_search_properties(metric, mode, config, **spec))

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.budget.refuse_new_trial() is not None:
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's own sentinel
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:
        return {}  # the budget is this session's (sweep/live.py); earlier sessions are in its ledger

    def set_state(self, state: dict[str, Any]) -> None:
        return None

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)  # unpickled by Tuner.restore: its budget is this session's (sweep/live.py)
        self.budget.searcher = self

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


class BudgetStopper(Stopper):
    """Ends the whole experiment once a limit is reached (checked on every step of Tune's loop)."""

    def __init__(self, budget: SweepBudget) -> None:
        self.budget = budget

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False  # trials are stopped all at once by stop_all, between results too

    def stop_all(self) -> bool:
        return self.budget.check() is not None


def sweep_meters(loaded: Any, *, started: float, plan: Any = None,
                 sweep_dir: Path | None = None) -> tuple[SweepForecast, SweepBudget | None]:
    """The forecast of this driver session of the sweep (after `ray.init`: it counts the cluster's slots)
    and its budget, with the earlier sessions' spend from `sweep_dir`'s ledger. With `sweep_dir` both are
    registered under its name (sweep/live.py) before Tune pickles or unpickles them."""
    import ray

    from catsith_sweep.plan.schedule import concurrent_slots
    from catsith_sweep.trainers import planned_budget

    exp = loaded.experiment
    search, res = exp.search, exp.resources
    cluster = ray.cluster_resources()
    slots = concurrent_slots(max_concurrent=search.max_concurrent_trials, cpu_per_trial=res.cpu,
                             gpu_per_trial=res.gpu, machine_cpus=float(cluster.get("CPU", 1)),
                             machine_gpus=float(cluster.get("GPU", 0)))
    forecast = SweepForecast(started=started, planned=search.num_samples, slots=slots,
                             units_per_trial=res.gpu if res.gpu > 0 else res.cpu,
                             total_steps=planned_budget(exp)[0], every_n_steps=exp.eval.every_n_steps,
                             scheduler=search.scheduler, grace_period=search.grace_period,
                             reduction_factor=search.reduction_factor, plan=plan)
    budget = None
    if search.budget and search.budget.limits():
        ledger = BudgetLedger(sweep_dir / LEDGER_FILE, f"{started:.3f}") if sweep_dir is not None else None
        budget = SweepBudget(search.budget, forecast, ledger=ledger)
    if sweep_dir is not None:
        for name, meter in (("forecast", forecast), ("budget", budget)):
            if meter is not None:
                meter.live_key = f"sweep {sweep_dir.name}: {name}"
                register(meter.live_key, meter)
    return forecast, budget


def figures(forecast: SweepForecast, budget: SweepBudget | None, states: dict[str, int] | None) -> dict[str, Any]:
    """What the parent run and `sweep.json` record at the end: predicted vs actual, the budget's use (of
    the whole sweep: a resumed one's earlier driver sessions count)."""
    from catsith_sweep.sweep.forecast import compare

    metrics = compare(forecast.predicted, forecast.actual())
    metrics["compute_hours"] = forecast.compute_hours()
    tags = {"catsith.prediction_source": forecast.predicted.source if forecast.predicted else "none"}
    if budget is not None:
        budget.record(force=True)
        if budget.ledger is not None and budget.ledger.earlier_wall_s:
            metrics["earlier_sessions_wall_seconds"] = budget.ledger.earlier_wall_s
        if budget.wall_s:
            used = budget.elapsed_s()
            metrics["budget_wall_seconds"] = budget.wall_s
            metrics["budget_wall_overshoot"] = (used - budget.wall_s) / budget.wall_s
        if budget.compute_h:
            used = budget.compute_hours()
            metrics["budget_compute_hours"] = budget.compute_h
            metrics["budget_compute_overshoot"] = (used - budget.compute_h) / budget.compute_h
        if budget.ended_by:
            tags["catsith.budget_ended_by"] = budget.ended_by
    # Each trial's end: the elapsed seconds then and the ETA shown, to check the ETA against the end.
    eta_log = [{"elapsed": round(e, 1), "trials_ended": n, "eta": round(t, 1) if t is not None else None}
               for e, n, t in forecast.eta_log]
    return {"metrics": metrics, "tags": tags, "optuna_states": states or {}, "eta_log": eta_log}
