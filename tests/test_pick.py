"""`promote --pick fastest-within N%` on a multi-objective sweep: the rule on rows, its parsing, which
objectives it reads, and the whole choice against a real MLflow store with a teacher on the parent run."""

from __future__ import annotations

from pathlib import Path

import pytest

from catsith_sweep import tracking
from catsith_sweep.errors import UserInputError
from catsith_sweep.promote.pick import (
    Objectives,
    PickRule,
    choose_multi,
    fastest_within,
    objectives,
    parse_pick,
    threshold,
)
from catsith_sweep.tracking import Outcome, SweepRun, SweepStatus, TrialRow

QS = Objectives("sprite_kid", "min", "latency_ratio", "min")


def _row(trial: str, kid: float, ratio: float, outcome: Outcome = Outcome.FINISHED) -> TrialRow:
    return TrialRow(trial=trial, run_id=f"run-{trial}", outcome=outcome,
                    metrics={"sprite_kid": kid, "latency_ratio": ratio})


ROWS = [_row("slow-good", 0.102, 0.95), _row("fast-ok", 0.108, 0.60), _row("faster-ok", 0.110, 0.55),
        _row("fastest-bad", 0.150, 0.30), _row("stopped", 0.105, 0.40, Outcome.STOPPED_EARLY),
        _row("failed", 0.100, 0.20, Outcome.FAILED)]


def test_fastest_within_tolerance_of_the_teacher() -> None:
    pick = fastest_within(ROWS, QS, reference=0.100, rule=PickRule(0.10))
    assert pick.limit == pytest.approx(0.110)
    assert pick.chosen is not None and pick.chosen.trial == "faster-ok"  # 0.110 is within 10% (<=)
    assert [r.trial for r in pick.eligible] == ["faster-ok", "fast-ok", "slow-good"]  # fastest first
    # Trials that did not finish are never chosen, only named when they would have been faster.
    assert [r.trial for r in pick.unfinished] == ["failed", "stopped"]
    tighter = fastest_within(ROWS, QS, reference=0.100, rule=PickRule(0.05))
    assert tighter.chosen is not None and tighter.chosen.trial == "slow-good"
    assert fastest_within(ROWS, QS, reference=0.05, rule=PickRule(0.10)).chosen is None


def test_a_maximised_quality_and_ties() -> None:
    obj = Objectives("psnr", "max", "latency_ms", "min")
    rows = [TrialRow(trial=t, run_id=t, outcome=Outcome.FINISHED, metrics={"psnr": q, "latency_ms": s})
            for t, q, s in (("a", 30.0, 10.0), ("b", 27.5, 8.0), ("c", 26.0, 5.0), ("d", 29.0, 8.0))]
    assert threshold(30.0, 0.10, "max") == pytest.approx(27.0)
    pick = fastest_within(rows, obj, reference=30.0, rule=PickRule(0.10))
    assert pick.chosen is not None and pick.chosen.trial == "d"  # b and d tie on speed; d has the better psnr


def test_parse_pick() -> None:
    assert parse_pick(["fastest-within", "10%"]) == PickRule(0.10)
    assert parse_pick(["fastest-within", "2.5"]).tolerance == pytest.approx(0.025)
    assert PickRule(0.1).describe() == "fastest-within 10%"
    for words in (["best"], ["slowest-within", "10%"], ["fastest-within", "ten"], ["fastest-within", "-5%"]):
        with pytest.raises(UserInputError, match="fastest-within"):
            parse_pick(words)


def test_objectives_default_to_first_and_last() -> None:
    sweep = SweepRun(run_id="p", experiment_id="1", sweep_id="s1", name="", status=SweepStatus.FINISHED,
                     trainer="distill", metrics=["sprite_kid", "unet_params", "latency_ratio"],
                     modes=["min", "min", "min"])
    assert objectives(sweep) == QS
    assert objectives(sweep, speed="unet_params").speed == "unet_params"
    with pytest.raises(UserInputError, match="--quality fid: not an objective of sweep s1"):
        objectives(sweep, quality="fid")
    with pytest.raises(UserInputError, match="both sprite_kid"):
        objectives(sweep, speed="sprite_kid")


@pytest.fixture()
def store(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A real MLflow store with a two-objective sweep: the parent run has the teacher's figures."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = tracking.client(uri)
    exp_id = c.create_experiment("distill-x", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = c.create_run(exp_id, run_name="sweep s1", tags={
        tracking.TAG_KIND: "sweep", tracking.TAG_SWEEP: "s1", "catsith.trainer": "distill",
        "catsith.metric": "sprite_kid,latency_ratio", "catsith.mode": "min,min",
        "catsith.sweep_status": "finished"}).info.run_id
    c.log_metric(parent, "teacher_sprite_kid", 0.100)
    c.log_metric(parent, "teacher_latency_ms", 40.0)
    c.log_metric(parent, "baseline_sprite_kid", 0.400)
    runs = {}
    for row in ROWS:
        run_id = c.create_run(exp_id, run_name=f"#{row.trial}", tags={
            tracking.PARENT_TAG: parent, tracking.TAG_TRIAL: row.trial, tracking.TAG_KIND: "trial",
            tracking.TAG_SWEEP: "s1", tracking.TAG_FINISHED: str(row.outcome is Outcome.FINISHED).lower(),
            **({tracking.TAG_EARLY: "true"} if row.outcome is Outcome.STOPPED_EARLY else {}),
            **({tracking.TAG_ERROR: "RuntimeError: boom"} if row.outcome is Outcome.FAILED else {})}).info.run_id
        for key, value in row.metrics.items():
            c.log_metric(run_id, key, value, step=4)
        c.set_terminated(run_id, row.outcome.mlflow_status)
        runs[row.trial] = run_id
    c.set_terminated(parent, "FINISHED")
    return uri, runs


def test_choice_states_the_rule_and_the_teacher(store: tuple[str, dict[str, str]]) -> None:
    uri, runs = store
    multi = choose_multi(uri, "distill-x", pick=["fastest-within", "10%"])
    assert multi.choice.run_id == runs["faster-ok"] and multi.reference is not None
    assert multi.rule == ("fastest-within 10%: the best latency_ratio (min) among finished trials whose sprite_kid "
                          "(min) is within 10% of the teacher's 0.1 (<= 0.11)")
    assert multi.choice.rule == multi.rule
    default = choose_multi(uri, "distill-x")
    assert default.choice.run_id == runs["faster-ok"] and "(the default for multi-objective sweeps" in default.rule
    named = choose_multi(uri, "distill-x", run_id=runs["slow-good"])
    assert named.choice.run_id == runs["slow-good"] and named.rule == f"--run-id {runs['slow-good']}, as asked"
    with pytest.raises(UserInputError, match="only finished trials can be promoted"):
        choose_multi(uri, "distill-x", run_id=runs["stopped"])
    with pytest.raises(UserInputError, match=r"within 1% .* no finished trial qualifies \(best sprite_kid: trial "
                                             r"slow-good sprite_kid=0.102"):
        choose_multi(uri, "distill-x", pick=["fastest-within", "1%"], quality="sprite_kid")
    # Read the other way round: latency_ratio is a ratio to the teacher, whose own is 1.
    swapped = choose_multi(uri, "distill-x", quality="latency_ratio", speed="sprite_kid")
    assert swapped.choice.run_id == runs["slow-good"] and "within 10% of the teacher's 1 (<= 1.1)" in swapped.rule
