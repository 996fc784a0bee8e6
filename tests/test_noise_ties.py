"""Trials within the noise floor of the best are ties, not losers: in the tie marks, the markdown and JSON
leaderboards of the parent run, and the `leaderboard` command reading a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catsith_sweep import tracking
from catsith_sweep.cli import main
from catsith_sweep.sweep.baseline import BEST_MARK, TIE_MARK, Baseline, floor_of, log_to_parent, tie_marks, verdict
from catsith_sweep.sweep.summary import leaderboard_markdown
from catsith_sweep.tracking import Outcome, SweepStatus, TrialRow, queries, sweep_runs
from catsith_sweep.tracking import tags as t
from catsith_sweep.tracking.trial_logger import TrialLogger

EXP = "ties"


def _row(trial: str, fid: float | None, outcome: Outcome = Outcome.FINISHED) -> TrialRow:
    return TrialRow(trial=trial, run_id=f"run-{trial}", outcome=outcome, name=f"#{trial}",
                    metrics={} if fid is None else {"fid": fid})


ROWS = [_row("a", 5.0), _row("b", 5.3), _row("c", 6.5), _row("d", 5.1, Outcome.STOPPED_EARLY), _row("e", None),
        _row("f", 4.95, Outcome.FAILED)]


def test_ties_are_the_ranked_trials_within_two_noise_floors_of_the_best() -> None:
    # floor 0.2: 2 floors = 0.4; b is 0.3 from the best (a tie), c 1.5 (a loser); d and f are not
    # finished, so they never rank nor tie, however close their value.
    assert tie_marks(ROWS, "fid", "min", 0.2) == {"a": BEST_MARK, "b": TIE_MARK}
    assert tie_marks(ROWS, "fid", "min", 0.1) == {"a": BEST_MARK}  # 0.3 > 2 x 0.1
    assert tie_marks(ROWS, "fid", "min", 1.0) == {"a": BEST_MARK, "b": TIE_MARK, "c": TIE_MARK}
    assert tie_marks(ROWS, "fid", "max", 0.2) == {"c": BEST_MARK}  # 6.5 vs 5.3: 1.2 apart
    # No noise floor (one eval seed, or no baseline): only the best is marked, nothing ties.
    assert tie_marks(ROWS, "fid", "min", None) == {"a": BEST_MARK}
    assert tie_marks(ROWS, "fid", "min", 0.0) == {"a": BEST_MARK}
    assert tie_marks([_row("x", None)], "fid", "min", 1.0) == {}


def test_markdown_leaderboard_has_a_tie_column_and_says_what_it_means() -> None:
    text = leaderboard_markdown(ROWS, "fid", "min", noise_floor=0.2)
    lines = text.splitlines()
    assert lines[0].startswith("| rank | tie | trial |")
    by_trial = {line.split(" | ")[2]: line for line in lines[2:] if line.startswith("|")}
    assert by_trial["a"].startswith(f"| 1 | {BEST_MARK} |")
    assert by_trial["b"].startswith(f"| 2 | {TIE_MARK} |")
    assert by_trial["c"].startswith("| 3 |  |")
    assert by_trial["d"].startswith("| - |  |")
    assert "within 2 noise floors (0.4) of the best fid" in text
    assert "no ties are marked" in leaderboard_markdown(ROWS, "fid", "min")


def test_verdict_says_whether_the_gain_is_beyond_noise() -> None:
    assert verdict(5.0, 6.0, 0.1, "min") == ("best 5 vs 6 before training (+16.7%); noise floor 0.1 "
                                             "(x2 = 0.2): beyond noise")
    assert verdict(5.9, 6.0, 0.1, "min").endswith("within noise of the baseline")
    assert verdict(0.9, 0.8, None, "max") == "best 0.9 vs 0.8 before training (+12.5%)"
    assert floor_of({"noise_floor_fid": 0.3, "baseline_fid": 6.0}, "fid") == 0.3
    assert floor_of({"baseline_fid": 6.0}, "fid") is None


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A finished sweep written as the driver writes one: parent run with its baseline and noise floor,
    a TrialLogger per trial, the summary with its tie marks."""
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps its artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = tracking.ensure_experiment(uri, EXP)
    parent = sweep_runs.start_sweep_run(uri, exp_id, sweep_id="s1", trainer="lora", metrics=["fid"], modes=["min"],
                                        inputs={"exp.yaml": "name: ties\n"}, params={})
    grid = tmp_path / "samples.png"
    grid.write_bytes(b"\x89PNG\r\n\x1a\n")
    log_to_parent(uri, parent, Baseline(metrics={"fid": 7.0, "kid": 0.5}, noise_floors={"noise_floor_fid": 0.2},
                                        per_seed=[{"fid": 7.0}, {"fid": 7.2}], images={"samples": grid},
                                        key="k" * 32, cached=True, seconds=3.0))
    for row in ROWS[:3]:
        logger = TrialLogger(uri=uri, experiment_id=exp_id, parent_run_id=parent, trial_id=row.trial,
                             trial_name=f"#{row.trial} rank=4", tags={t.SWEEP: "s1"}, params={"lora.rank": 4},
                             config={"trainer": "lora"})
        logger.log_metrics(dict(row.metrics), step=10)
        logger.flush()
        sweep_runs.end_trial_run(uri, exp_id, parent, row.trial, Outcome.FINISHED)
    sweep = queries.sweep_by_run_id(uri, parent)
    rows = queries.trial_rows(uri, sweep)
    board = tmp_path / "leaderboard.md"
    board.write_text(leaderboard_markdown(rows, "fid", "min", noise_floor=0.2))
    sweep_runs.log_summary(uri, parent, rows=rows, metric="fid", leaderboard=board, best=rows[0], counts={},
                           plots=[], ties=tie_marks(rows, "fid", "min", 0.2))
    sweep_runs.end_sweep_run(uri, sweep, SweepStatus.FINISHED)
    return uri


def test_parent_run_holds_baseline_noise_floor_and_json_ties(store: str, tmp_path: Path) -> None:
    sweep = queries.choose_sweep(store, EXP).sweep
    metrics = queries.sweep_metrics(store, sweep)
    assert metrics["baseline_fid"] == 7.0 and metrics["noise_floor_fid"] == 0.2 and metrics["baseline_kid"] == 0.5
    run = tracking.client(store).get_run(sweep.run_id)
    assert run.data.tags[t.BASELINE_SOURCE].startswith("baseline reused from the cache (2 eval seeds")
    import mlflow.artifacts

    local = mlflow.artifacts.download_artifacts(run_id=sweep.run_id, artifact_path="leaderboard.json",
                                                dst_path=str(tmp_path / "dl"), tracking_uri=store)
    table = json.loads(Path(local).read_text())
    ties = dict(zip([r[0] for r in table["data"]], [r[table["columns"].index("tie")] for r in table["data"]],
                    strict=True))
    assert ties == {"a": BEST_MARK, "b": TIE_MARK, "c": ""}
    assert {a.path for a in tracking.client(store).list_artifacts(sweep.run_id, "baseline")} == {"baseline/samples"}


def test_leaderboard_command_marks_ties_from_the_parent_runs_noise_floor(store: str,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["leaderboard", EXP, "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    lines = {line.split("│")[3].strip(): line for line in out.splitlines() if line.count("│") > 5}
    assert BEST_MARK in lines["a"].split("│")[2]
    assert TIE_MARK in lines["b"].split("│")[2]
    assert lines["c"].split("│")[2].strip() == ""
    assert "within 2 noise floors (0.4) of the best fid" in " ".join(out.split())


def test_unranked_trials_follow_the_ranked_ones_best_first() -> None:
    """Stopped and failed trials come after the ranked ones, ordered by their last value, then those with
    none: the top rows of a sweep where most trials stopped early show the closest contenders."""
    from catsith_sweep.sweep.summary import ordered

    rows = [*ROWS, _row("g", 7.0, Outcome.STOPPED_EARLY), _row("h", 4.0, Outcome.STOPPED_EARLY)]
    shown = [(position, row.trial) for position, row in ordered(rows, "fid", "min")]
    assert shown == [(1, "a"), (2, "b"), (3, "c"), (None, "h"), (None, "f"), (None, "d"), (None, "g"), (None, "e")]
    assert [row.trial for _, row in ordered(rows, "fid", "max")][3:] == ["g", "d", "f", "h", "e"]
