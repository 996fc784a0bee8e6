"""`tracking` on a real MLflow sqlite store, written by the same functions a sweep uses: which sweep the
leaderboard and promote pick, how runs end when a sweep is interrupted or fails, credentials kept out of
everything printed or logged, and the names trials get."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from catsith_sweep import tracking
from catsith_sweep.cli import main
from catsith_sweep.config import load_experiment
from catsith_sweep.tracking import Outcome, SweepStatus, TrialRow, count_outcomes, queries, rank, sweep_runs
from catsith_sweep.tracking import tags as t
from catsith_sweep.tracking.rows import better_unfinished
from catsith_sweep.tracking.trial_logger import TrialLogger

EXP = "tracked"
SECRET = "s3cret-token"


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new sqlite store keeps its artifacts in ./mlruns: keep them in the test's folder."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(("uri", "shown"), [
    (f"https://alice:{SECRET}@mlflow.example.com/x", "https://alice:***@mlflow.example.com/x"),
    (f"https://{SECRET}@mlflow.example.com", "https://***@mlflow.example.com"),
    (f"http://mlflow.example.com:5000/?token={SECRET}&team=sprites", "http://mlflow.example.com:5000/?token=***&team=sprites"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("databricks://profile", "databricks://profile"),
])
def test_redact_uri(uri: str, shown: str) -> None:
    assert tracking.redact_uri(uri) == shown
    assert SECRET not in tracking.redact_uri(uri)


def test_rank_counts_and_passed_over_trials() -> None:
    def row(trial: str, outcome: Outcome, fid: float | None) -> TrialRow:
        return TrialRow(trial=trial, run_id=f"run-{trial}", outcome=outcome,
                        metrics={} if fid is None else {"fid": fid})

    rows = [row("a", Outcome.FINISHED, 5.0), row("b", Outcome.FINISHED, 3.0), row("c", Outcome.FAILED, 1.0),
            row("d", Outcome.STOPPED_EARLY, 2.0), row("e", Outcome.FINISHED, float("nan")),
            row("f", Outcome.KILLED, None)]
    assert [r.trial for r in rank(rows, "fid", "min")] == ["b", "a"]
    assert [r.trial for r in rank(rows, "fid", "max")] == ["a", "b"]
    assert [r.trial for r in better_unfinished(rows, "fid", "min", 3.0)] == ["c", "d"]
    assert count_outcomes(rows) == {Outcome.FINISHED: 3, Outcome.STOPPED_EARLY: 1, Outcome.FAILED: 1,
                                    Outcome.KILLED: 1}


def _sweep(uri: str, sweep_id: str, trials: dict[str, tuple[float, Outcome]], end: SweepStatus | None) -> str:
    """A sweep written as a real one is: parent run, a TrialLogger per trial, ended by the driver's calls."""
    exp_id = tracking.ensure_experiment(uri, EXP)
    parent = sweep_runs.start_sweep_run(uri, exp_id, sweep_id=sweep_id, trainer="lora", metrics=["fid"],
                                        modes=["min"], inputs={"exp.yaml": "name: tracked\n"}, params={})
    for trial, (fid, outcome) in trials.items():
        logger = TrialLogger(uri=uri, experiment_id=exp_id, parent_run_id=parent, trial_id=trial,
                             trial_name=f"#{trial} rank=4", tags={t.SWEEP: sweep_id}, params={"lora.rank": 4},
                             config={"trainer": "lora"})
        logger.log_metrics({"fid": fid}, step=10)
        logger.flush()
        if outcome is Outcome.FAILED:
            logger.record_error(RuntimeError("out of memory"))
        if outcome is not Outcome.RUNNING:
            sweep_runs.end_trial_run(uri, exp_id, parent, trial, outcome)
    if end is not None:
        sweep_runs.end_sweep_run(uri, queries.sweep_by_run_id(uri, parent), end,
                                 "" if end is SweepStatus.FINISHED else "test")
    return parent


@pytest.fixture
def store(tmp_path: Path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _sweep(uri, "old", {"1": (5.0, Outcome.FINISHED), "2": (4.0, Outcome.FINISHED)}, SweepStatus.FINISHED)
    _sweep(uri, "new", {"3": (1.0, Outcome.FINISHED), "4": (2.0, Outcome.RUNNING)}, SweepStatus.INTERRUPTED)
    return uri


def test_rows_read_back_as_written(store: str) -> None:
    pick = queries.choose_sweep(store, EXP)
    rows = {r.trial: r for r in queries.trial_rows(store, pick.sweep)}
    assert {k: r.outcome for k, r in rows.items()} == {"1": Outcome.FINISHED, "2": Outcome.FINISHED}
    assert rows["2"].name == "#2 rank=4" and rows["2"].label == "#2 2" and rows["2"].trainer == "lora"
    assert rows["2"].params == {"lora.rank": "4"} and rows["2"].param("lora.rank") == 4
    assert rows["2"].value("fid") == 4.0


def test_leaderboard_and_promote_prefer_the_finished_sweep(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    pick = queries.choose_sweep(store, EXP)
    assert pick.sweep.sweep_id == "old" and [s.sweep_id for s in pick.passed_over] == ["new"]
    assert main(["leaderboard", EXP, "--tracking-uri", store]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "using sweep old (finished, the newest finished sweep); passed over newer unfinished new " \
           "(interrupted): pass --sweep-id to use one" in out
    assert "#2 rank=4" in out and "#3 rank=4" not in out

    assert main(["leaderboard", EXP, "--tracking-uri", store, "--sweep-id", "new"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "using sweep new (interrupted, as asked)" in out and "killed" in out and "#3 rank=4" in out
    assert main(["leaderboard", EXP, "--tracking-uri", store, "--sweep-id", "nope"]) == 2
    assert "no such sweep" in capsys.readouterr().err

    from catsith_sweep.promote.select import choose_trial

    choice = choose_trial(store, EXP)
    assert choice.sweep_id == "old" and choice.trial == "2" and "passed over newer unfinished new" in choice.sweep_note
    assert choose_trial(store, EXP, sweep_id="new").trial == "3"


def test_only_unfinished_sweeps_use_the_newest(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _sweep(uri, "a", {"1": (5.0, Outcome.FINISHED)}, SweepStatus.FAILED)
    _sweep(uri, "b", {"2": (5.0, Outcome.FINISHED)}, None)
    pick = queries.choose_sweep(uri, EXP)
    assert pick.sweep.sweep_id == "b" and pick.sweep.status is SweepStatus.RUNNING
    assert "none has finished" in pick.describe()


def _run_status(uri: str, run_id: str) -> tuple[str, dict[str, str]]:
    run = tracking.client(uri).get_run(run_id)
    return run.info.status, run.data.tags


def _fail(exc: BaseException) -> Any:
    def raise_it() -> None:
        raise exc

    return raise_it


@pytest.mark.parametrize(("raise_it", "status", "sweep_status", "ended_by"), [
    (_fail(RuntimeError("disk full")), "FAILED", "failed", "driver error: RuntimeError: disk full"),
    (_fail(KeyboardInterrupt()), "KILLED", "interrupted", "interrupted (Ctrl-C)"),
    (lambda: os.kill(os.getpid(), signal.SIGTERM), "KILLED", "interrupted", "interrupted (signal SIGTERM)"),
])
def test_a_stopped_driver_ends_its_runs(tmp_path: Path, raise_it: Any, status: str, sweep_status: str,
                                        ended_by: str) -> None:
    from catsith_sweep.sweep.driver import ending_runs_on_failure, write_state

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = _sweep(uri, "s", {"1": (5.0, Outcome.FINISHED), "2": (4.0, Outcome.RUNNING)}, None)
    sweep = queries.sweep_by_run_id(uri, parent)
    write_state(tmp_path, status="running")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises((RuntimeError, KeyboardInterrupt)), ending_runs_on_failure(uri, sweep, tmp_path):
        raise_it()
    assert signal.getsignal(signal.SIGTERM) == before
    run_status, tags = _run_status(uri, parent)
    assert (run_status, tags[t.SWEEP_STATUS], tags[t.ENDED_BY]) == (status, sweep_status, ended_by)
    children = {r.trial: r for r in queries.trial_rows(uri, sweep)}
    assert children["1"].outcome is Outcome.FINISHED  # ended before: left as it was
    assert children["2"].outcome is Outcome.KILLED
    assert _run_status(uri, children["2"].run_id)[1][t.ENDED_BY] == ended_by
    state = json.loads((tmp_path / "sweep.json").read_text())
    assert state["status"] == sweep_status and state["ended_by"] == ended_by
    assert queries.sweep_by_run_id(uri, parent).status.value == sweep_status

    sweep_runs.reopen_sweep_run(uri, parent)  # what a resumed sweep does
    run_status, tags = _run_status(uri, parent)
    assert run_status == "RUNNING" and t.ENDED_BY not in tags


def test_parent_run_inputs_and_plan_keep_credentials_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from catsith_sweep.sweep.summary import start_parent_run

    secret_uri = f"https://alice:{SECRET}@mlflow.example.com/"
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(f"name: {EXP}\ntrainer: vae\ntracking: {{uri: \"{secret_uri}\"}}\n")
    loaded = load_experiment(exp_file)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = start_parent_run(uri, tracking.ensure_experiment(uri, EXP), loaded, "s")
    from catsith_sweep.tracking.artifacts import INPUTS_DIR, download

    inputs = download(uri, parent, INPUTS_DIR, tmp_path / "downloaded")
    assert inputs is not None
    texts = {p.name: p.read_text() for p in inputs.iterdir()}
    assert set(texts) == {"exp.yaml", "resolved_config.yaml"}
    for text in texts.values():
        assert SECRET not in text and "alice:***@mlflow.example.com" in text
    assert loaded.experiment.tracking.uri == secret_uri  # the run itself still gets the real one

    assert main(["run", str(exp_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out and "alice:***@mlflow.example.com" in " ".join(out.split())

    # What trials get as their experiment (logged as `config.*` params and export/config.yaml).
    from catsith_sweep.sweep.summary import public_experiment

    public = public_experiment(loaded.experiment)
    params = tracking.flatten(public.model_dump(mode="json"))
    assert params["tracking.uri"] == "https://alice:***@mlflow.example.com/"
    assert public.model_copy(update={"tracking": loaded.experiment.tracking}) == loaded.experiment


def test_trials_are_named_for_a_person() -> None:
    from ray.tune.experiment import Trial

    from catsith_sweep.sweep.callbacks import trial_dirname, trial_name

    config = {"lora.rank": 4, "lora.alpha": 4.3412, "train.learning_rate": 0.0009,
              "lora.target_modules": 'json:["to_q", "to_v"]'}
    trial = Trial("trial_main", config=config, experiment_tag="3_lora.rank=4", trial_id="d3a478ea", stub=True,
                  trial_name_creator=trial_name, trial_dirname_creator=trial_dirname)
    assert str(trial) == "#3 rank=4 alpha=4.34 lr=9.0e-4 target_modules=[to_q,to_v]"
    assert trial_dirname(trial) == "trial_d3a478ea"
