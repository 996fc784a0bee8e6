"""`search.budget`: the limit arithmetic (unit tests on a fake forecast) and a real sweep cut by a wall
budget (the CLI, Ray Tune, Optuna, MLflow): it ends within 5% of the budget, the trial it cut is KILLED
in MLflow with the reason and PRUNED in Optuna, and the normal summary is written."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from catsith_sweep.config.schema import BudgetSection, Experiment
from catsith_sweep.plan.saved import Predicted
from catsith_sweep.sweep.budget import LEDGER_FILE, BudgetLedger, BudgetSearcher, BudgetStopper, SweepBudget
from catsith_sweep.sweep.forecast import SweepForecast, compare
from catsith_sweep.sweep.live import register


def _forecast(started: float = 0.0, **kw: object) -> SweepForecast:
    args = {"started": started, "planned": 8, "slots": 2, "units_per_trial": 1.0, "total_steps": 100,
            "every_n_steps": 50, "scheduler": "none", "grace_period": 1, "reduction_factor": 2}
    return SweepForecast(**{**args, **kw})  # type: ignore[arg-type]


def _trial(trial_id: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, last_result={"trial_finished": True, "trial_failed": False})


def test_cost_needs_a_price() -> None:
    with pytest.raises(ValueError, match="cost_per_hour"):
        BudgetSection(cost_usd=5.0)
    assert BudgetSection(cost_usd=5.0, cost_per_hour=2.5).limits() == {"cost_usd": 5.0}
    exp = Experiment.model_validate({"name": "x", "trainer": "vae", "search": {"budget": {"wall_minutes": 2}}})
    assert exp.search.budget is not None and exp.search.budget.wall_minutes == 2


def test_wall_limit_is_reached_early_by_the_reserve(monkeypatch: pytest.MonkeyPatch) -> None:
    forecast = _forecast(started=1000.0)
    budget = SweepBudget(BudgetSection(wall_minutes=1), forecast, reserve_s=8)
    assert budget.check(now=1000.0 + 51) is None
    reason = budget.check(now=1000.0 + 52)
    assert reason is not None and "wall_minutes 1 reached" in reason
    assert budget.check(now=1000.0 + 1) == reason  # remembered


def test_no_new_trial_when_the_forecast_says_it_would_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    import catsith_sweep.sweep.forecast as f

    clock = {"now": 0.0}
    monkeypatch.setattr(f.time, "time", lambda: clock["now"])
    forecast = _forecast(started=0.0, slots=1)
    budget = SweepBudget(BudgetSection(wall_minutes=2), forecast, reserve_s=5)
    assert budget.refuse_new_trial(now=0.0) is None  # nothing known: the first trial starts
    forecast.on_trial_start(0, [], _trial("a"))
    clock["now"] = 40.0
    forecast.on_trial_complete(0, [], _trial("a"))  # a trial takes 40 s
    assert budget.refuse_new_trial(now=40.0) is None  # 40 + 40 + 5 <= 120
    reason = budget.refuse_new_trial(now=80.0)  # 80 + 40 + 5 > 120
    assert reason is not None and "past search.budget.wall_minutes 2" in reason
    assert budget.check(now=80.0) is None  # refusing is not stopping


def test_compute_and_cost_limits_count_trial_time_times_its_share() -> None:
    forecast = _forecast(started=0.0, units_per_trial=0.5)  # half a GPU per trial
    forecast.begun = {"a": 0.0, "b": 0.0}
    forecast.ended = {"a": 3600.0}
    assert forecast.compute_hours(now=7200.0) == pytest.approx(1.5)  # (1 h + 2 h) x 0.5
    cost = SweepBudget(BudgetSection(cost_usd=3.0, cost_per_hour=2.0), forecast)  # $3 at $2/h = 1.5 h
    assert cost.check(now=7199.0) is None
    reason = cost.check(now=7200.0)
    assert reason is not None and "cost_usd 3" in reason


def _session(sweep_dir: Path, started: float, minutes: float) -> SweepBudget:
    """One driver session's forecast and budget, registered as `budget.sweep_meters` registers them."""
    forecast = _forecast(started=started)
    budget = SweepBudget(BudgetSection(wall_minutes=minutes), forecast, reserve_s=8,
                         ledger=BudgetLedger(sweep_dir / LEDGER_FILE, f"{started:.3f}"))
    for name, meter in (("forecast", forecast), ("budget", budget)):
        meter.live_key = f"sweep {sweep_dir.name}: {name}"
        register(meter.live_key, meter)
    return budget


def test_a_resumed_sweep_counts_earlier_sessions_not_their_clock(tmp_path: Path) -> None:
    import cloudpickle  # what Tune writes tuner.pkl with

    first = _session(tmp_path, started=1000.0, minutes=1)
    pickled = cloudpickle.dumps((BudgetStopper(first), BudgetSearcher(None, first)))  # tune/tuner.pkl
    assert first.check(now=1040.0) is None  # 40 s spent, then the driver was interrupted
    first.record(now=1040.0, force=True)

    resumed = _session(tmp_path, started=5000.0, minutes=1)  # the resumed driver, much later
    stopper, searcher = cloudpickle.loads(pickled)  # Tuner.restore
    assert stopper.budget is resumed and searcher.budget is resumed and resumed.searcher is searcher
    assert resumed.ledger is not None and resumed.ledger.earlier_wall_s == 40.0
    # 60 s - 40 s already spent - 8 s reserve: this session stops 12 s after its own start.
    assert resumed.check(now=5011.0) is None
    reason = resumed.check(now=5012.0)
    assert reason is not None and "wall_minutes 1 reached (52 s elapsed, 40 s of it before this resume" in reason
    assert stopper.stop_all()


def test_predicted_vs_actual_metrics() -> None:
    predicted = Predicted(wall_seconds=110.0, steps=90.0, trials=4, trial_seconds=20.0, source="plan")
    figures = compare(predicted, {"wall_seconds": 100.0, "steps": 100.0, "trials": 4.0})
    assert figures["predicted_wall_seconds"] == 110.0 and figures["actual_wall_seconds"] == 100.0
    assert figures["wall_error"] == pytest.approx(0.1) and figures["steps_error"] == pytest.approx(-0.1)
    assert figures["trials_error"] == 0.0
    assert "wall_within_p10_p90" not in figures  # a prediction without a range (saved before it existed)
    ranged = Predicted(wall_seconds=110.0, steps=90.0, trials=4, trial_seconds=20.0, source="plan",
                       wall_low=95.0, wall_high=130.0)
    assert compare(ranged, {"wall_seconds": 100.0, "steps": 100.0, "trials": 4.0})["wall_within_p10_p90"] == 1.0
    assert compare(ranged, {"wall_seconds": 90.0, "steps": 100.0, "trials": 4.0})["wall_within_p10_p90"] == 0.0


def test_eta_from_finished_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    forecast = _forecast(started=0.0, planned=4, slots=2)
    forecast.begun = {"a": 0.0, "b": 0.0, "c": 30.0}
    forecast.ended = {"a": 30.0}
    forecast.steps = {"a": 100, "b": 100, "c": 33}
    # 0.3 s/step; pending 1 (100 steps, 30 s), b has 0 steps left, c 67 (20.1 s): (30 + 0 + 20.1) / 2 + summary
    from catsith_sweep.sweep.forecast import SUMMARY_S

    assert forecast.eta_s(now=40.0) == pytest.approx(25.05 + SUMMARY_S)


def test_eta_does_not_take_trials_stopped_early_for_the_norm() -> None:
    """Seconds per step, times the steps the prediction expects of a trial: a short trial stopped early
    (the demo's #3, 160 of 320 steps) must not make the trials still to run look short."""
    from catsith_sweep.sweep.forecast import SUMMARY_S

    plan = Predicted(wall_seconds=1000.0, steps=600.0, trials=4, trial_seconds=200.0, source="plan")
    forecast = _forecast(started=0.0, planned=4, slots=1, total_steps=200, plan=plan)  # 150 steps expected
    forecast.begun, forecast.ended = {"a": 0.0, "b": 200.0}, {"a": 200.0, "b": 250.0}
    forecast.steps = {"a": 200, "b": 50}
    # 1 s/step over both; pending 2 x 150 steps
    assert forecast.eta_s(now=250.0) == pytest.approx(300.0 + SUMMARY_S)
    forecast.begun["c"], forecast.steps["c"] = 250.0, 160  # past the expected 150: runs its whole budget
    assert forecast.eta_s(now=300.0) == pytest.approx((150.0 + 40.0) + SUMMARY_S)


def test_eta_times_first_trials_from_their_first_evaluation() -> None:
    """While only the slots' first trials have ended (they also paid imports and the baseline beside
    them), s/step is read from their first evaluation to their end; ones that reported once count whole,
    unless a calibrated plan is there."""
    forecast = _forecast(started=0.0, planned=4, slots=2, total_steps=100)
    for trial_id, begun in (("a", 0.0), ("b", 0.0)):
        forecast.begun[trial_id] = begun
    forecast.first_result = {"a": (40.0, 50), "b": (45.0, 50)}
    forecast.ended, forecast.steps = {"a": 65.0, "b": 70.0}, {"a": 100, "b": 100}
    assert forecast.step_seconds() == pytest.approx((25.0 + 25.0) / 100)  # not (65 + 70) / 200
    forecast.first_result = {"a": (65.0, 100), "b": (70.0, 100)}  # one evaluation each: nothing to exclude
    assert forecast.step_seconds() == pytest.approx((65.0 + 70.0) / 200)
    forecast.predicted = Predicted(wall_seconds=200.0, steps=400.0, trials=4, trial_seconds=50.0, source="plan")
    assert forecast.step_seconds() is None and forecast.trial_seconds() == 50.0  # the plan's, not 67.5
    forecast.begun["c"], forecast.ended["c"], forecast.steps["c"] = 65.0, 95.0, 100  # a later trial: its norm
    assert forecast.step_seconds() == pytest.approx(0.3)


def test_eta_counts_down_before_the_first_evaluation() -> None:
    """Ray sees only evaluations, so a running trial's steps are unknown until its first: until then
    its time left is the expected trial time less the time it has run."""
    from catsith_sweep.sweep.forecast import SUMMARY_S

    plan = Predicted(wall_seconds=100.0, steps=200.0, trials=2, trial_seconds=100.0, source="plan")
    forecast = _forecast(started=0.0, planned=2, slots=2, total_steps=100, plan=plan)
    forecast.begun = {"a": 0.0, "b": 0.0}
    assert forecast.eta_s(now=10.0) == pytest.approx(90.0 + SUMMARY_S)
    assert forecast.eta_s(now=60.0) == pytest.approx(40.0 + SUMMARY_S)


EXPERIMENT = """\
# Budget test: SpriteVAE trials two at a time, one short (3 steps) beside long ones (100000 steps) that the
# wall budget cuts; later long ones are either never started (the forecast) or cut too.
#   python -m catsith_sweep run exp.yaml
name: budget_test
trainer: vae
data: {synth_variants: 1}
train: {max_steps: 3, batch_size: 16, num_threads: 1, device: cpu, learning_rate: 3.0e-3}
eval: {every_n_steps: 50, num_metric_samples: 8}
vae: {latent_dim: 8, hidden_dims: [8, 16, 16, 32]}
search:
  space:
    train.max_steps: {type: categorical, values: [3, 100000]}
  metric: recon_mse
  mode: min
  sampler: random
  seed: 11  # draws 3, 100000, 100000, 100000
  scheduler: none
  num_samples: 4
  max_concurrent_trials: 2
  # 5 min: the short trial (3 steps, but it waits for the sprite net's first training and shares the
  # machine with the baseline thread) ended ~3 min in on CI's machine; the long one beside it is
  # always still running when the limit comes, whatever the machine's speed.
  budget: {wall_minutes: 5}
"""


@pytest.mark.integration
@pytest.mark.xdist_group("ray")
@pytest.mark.timeout(700)
def test_wall_budget_cuts_the_sweep_cleanly(tmp_path: Path, catsith_cache: Path) -> None:
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    env = {**os.environ, "CATSITH_CACHE": str(catsith_cache), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "catsith_sweep", "run", "exp.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    (sweep_dir,) = [p for p in (tmp_path / "runs" / "budget_test").iterdir() if p.is_dir()]
    state = json.loads((sweep_dir / "sweep.json").read_text())
    assert state["status"] == "finished" and (sweep_dir / "leaderboard.md").is_file()
    figures = state["figures"]
    metrics = figures["metrics"]
    print("budget figures:", json.dumps(figures, indent=1))
    assert metrics["budget_wall_seconds"] == 300.0
    assert metrics["budget_wall_overshoot"] <= 0.05, metrics
    assert "wall_minutes 5 reached" in figures["tags"]["catsith.budget_ended_by"]
    assert figures["optuna_states"].get("COMPLETE") == 1 and figures["optuna_states"].get("PRUNED", 0) >= 1

    with sqlite3.connect(tmp_path / "mlflow.db") as con:
        runs = dict(con.execute("select run_uuid, status from runs").fetchall())
        tags = con.execute("select run_uuid, key, value from tags").fetchall()
        parent_metrics = dict(con.execute("select key, value from metrics where key like 'predicted_%' or "
                                          "key like 'actual_%'").fetchall())
    kinds = {r: v for r, k, v in tags if k == "catsith.run_kind"}
    ended_by = {r: v for r, k, v in tags if k == "catsith.ended_by"}
    trials = {r: s for r, s in runs.items() if kinds.get(r) == "trial"}
    # The short trial finishes; the long one running beside it is cut by the budget. A third starts only
    # if the forecast says it fits, and is then cut too: never a trial left RUNNING or FAILED.
    assert sorted(set(trials.values())) == ["FINISHED", "KILLED"] and list(trials.values()).count("FINISHED") == 1
    for run_id in (r for r, s in trials.items() if s == "KILLED"):
        assert "wall_minutes 5 reached" in ended_by[run_id]
    parent = next(r for r in runs if kinds.get(r) == "sweep")
    assert runs[parent] == "FINISHED"
    # No plan was saved: the first finished trial gave the prediction the parent run compares with.
    assert {"predicted_wall_seconds", "actual_wall_seconds", "predicted_trials", "actual_trials"} <= set(parent_metrics)


@pytest.mark.integration
@pytest.mark.xdist_group("ray")
@pytest.mark.timeout(700)
def test_a_resumed_sweep_stops_at_the_budget_left(tmp_path: Path, catsith_cache: Path) -> None:
    """Interrupted once it has run a while, then resumed: the resumed session stops at the budget minus
    what the first session spent (the ledger), and the whole sweep stays within 5% of the budget."""
    import signal
    import time

    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    env = {**os.environ, "CATSITH_CACHE": str(catsith_cache), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "catsith_sweep", "run", "exp.yaml", "search.budget.wall_minutes=1.5"]
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "runs").rglob("budget_ledger.json")):  # written once trials run
        if time.monotonic() > deadline or first.poll() is not None:
            first.kill()
            pytest.fail("the sweep never started its trials:\n" + (first.communicate()[0] or "")[-3000:])
        time.sleep(1)
    time.sleep(5)
    os.killpg(first.pid, signal.SIGINT)
    output = first.communicate(timeout=300)[0]
    assert first.returncode == 130, output[-3000:]
    (ledger,) = (tmp_path / "runs").rglob("budget_ledger.json")
    (spent,) = [s["wall_seconds"] for s in json.loads(ledger.read_text())["sessions"].values()]

    resumed = subprocess.run([*command, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=400)
    state = json.loads((ledger.parent / "sweep.json").read_text())
    assert state["status"] == "finished", resumed.stdout[-4000:] + resumed.stderr[-4000:]
    # Exit 1 when the budget cut every trial (no finished trial, so no best one to show).
    assert resumed.returncode in (0, 1) and "killed" in resumed.stdout, resumed.stdout[-3000:]
    metrics, tags = state["figures"]["metrics"], state["figures"]["tags"]
    print("resumed budget figures:", json.dumps(state["figures"], indent=1))
    assert metrics["earlier_sessions_wall_seconds"] == spent
    assert "wall_minutes 1.5 reached" in tags["catsith.budget_ended_by"] and "before this resume" in \
        tags["catsith.budget_ended_by"]
    # This session ran for what was left (90 s - spent, the summary's reserve included), not 90 s.
    assert metrics["actual_wall_seconds"] <= 90 * 1.05 - spent, (spent, metrics)
    assert metrics["budget_wall_overshoot"] <= 0.05, metrics
