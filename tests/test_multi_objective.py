"""Multi-objective sweeps: what Optuna is told for each kind of trial end, the front and hypervolume built
from tracked trials, the reference point, the front's plot, the scheduler's objective, and promote's
atomic write of a distilled ONNX pipeline folder."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from catsith_sweep.sweep.multi import build_front, front_markdown
from catsith_sweep.sweep.search import OptunaStudySearcher
from catsith_sweep.sweep.trainable import FAILED, FINISHED, STEP
from catsith_sweep.tracking import Outcome, TrialRow
from catsith_sweep.tracking.queries import Reference, reference_from_metrics

METRICS, MODES = ["sprite_kid", "latency_ratio"], ["min", "min"]


def _searcher(sampler: optuna.samplers.BaseSampler | None = None) -> OptunaStudySearcher:
    return OptunaStudySearcher(space={"lr": FloatDistribution(1e-4, 1e-2, log=True)}, metric=METRICS, mode=MODES,
                               sampler=sampler or optuna.samplers.RandomSampler(seed=0))


def _run(searcher: OptunaStudySearcher, trial_id: str, evaluations: list[tuple[float, float]], *,
         finished: bool) -> dict:
    """Drive a trial as Tune does: one result per evaluation, the last one the final report when it
    finished."""
    result: dict = {}
    for i, (kid, ratio) in enumerate(evaluations):
        last = i == len(evaluations) - 1
        result = {"sprite_kid": kid, "latency_ratio": ratio, STEP: i + 1, FINISHED: last and finished,
                  FAILED: False}
        searcher.on_trial_result(trial_id, result)
    return result


def test_multi_objective_trial_ends_are_told_truthfully() -> None:
    searcher = _searcher()
    ids = ("done", "stopped", "failed", "nan", "missing")
    for trial_id in ids:
        searcher.suggest(trial_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Optuna refusing intermediate values of a multi-objective trial
        searcher.on_trial_complete("done", _run(searcher, "done", [(0.3, 0.9), (0.2, 0.7)], finished=True))
        # The scheduler (on sprite_kid) stopped it; its partial values would dominate "done".
        searcher.on_trial_complete("stopped", _run(searcher, "stopped", [(0.1, 0.5)], finished=False))
        searcher.on_trial_complete("failed", {"sprite_kid": 0.1, FAILED: True}, error=True)
        searcher.on_trial_complete("nan", _run(searcher, "nan", [(float("nan"), 0.5)], finished=True))
        missing = {"sprite_kid": 0.1, STEP: 1, FINISHED: True, FAILED: False}  # no latency_ratio
        searcher.on_trial_complete("missing", missing)
    done, stopped, failed, nan, miss = (searcher.study.trials[i] for i in range(len(ids)))
    assert done.state == TrialState.COMPLETE and done.values == [0.2, 0.7]  # the final values, in metric order
    assert stopped.state == TrialState.PRUNED and stopped.values is None
    assert all(t.intermediate_values == {} for t in searcher.study.trials)  # Optuna takes none here
    assert failed.state == nan.state == miss.state == TrialState.FAIL
    # The front holds the finished trial only, not the stopped one's better-looking partial values.
    assert [t.number for t in searcher.study.best_trials] == [done.number]


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_samplers_keep_suggesting_past_pruned_and_failed_trials(sampler: str) -> None:
    from catsith_sweep.sweep.space import make_sampler

    searcher = _searcher(make_sampler(sampler, 0))
    for i in range(12):  # past NSGA-II's first generation and TPE's startup trials
        trial_id = f"t{i}"
        params = searcher.suggest(trial_id)
        assert params is not None
        lr = params["lr"]
        assert 1e-4 <= lr <= 1e-2
        kid, ratio = abs(lr - 3e-3) * 100, 1e-3 / lr
        searcher.on_trial_complete(trial_id, _run(searcher, trial_id, [(kid, ratio)], finished=i % 3 != 1))
    states = [t.state for t in searcher.study.trials]
    assert states.count(TrialState.PRUNED) == 4 and states.count(TrialState.COMPLETE) == 8
    assert all(t.state == TrialState.COMPLETE for t in searcher.study.best_trials)


def _row(trial: str, kid: float | None, ratio: float, *, end: int, outcome: Outcome = Outcome.FINISHED) -> TrialRow:
    metrics = {"latency_ratio": ratio, **({"sprite_kid": kid} if kid is not None else {})}
    return TrialRow(trial=trial, run_id=f"run-{trial}", outcome=outcome, name=f"#{trial}", metrics=metrics,
                    params={"distill.level": '"tiny"'}, start_time=0, end_time=end)


def test_front_from_tracked_trials() -> None:
    rows = [
        _row("a", 0.20, 0.90, end=1), _row("b", 0.25, 0.50, end=3), _row("c", 0.30, 0.95, end=2),
        _row("d", 0.18, 0.70, end=4),
        _row("stopped", 0.05, 0.10, end=5, outcome=Outcome.STOPPED_EARLY),  # partial budget: never on the front
        _row("failed", 0.01, 0.10, end=6, outcome=Outcome.FAILED),
        _row("no-kid", None, 0.10, end=7),
    ]
    teacher = Reference("teacher", {"sprite_kid": 0.15, "latency_ratio": 1.0})
    front = build_front(rows, METRICS, MODES, teacher)
    assert [r.trial for r in front.finished] == ["a", "c", "b", "d"]  # the order they ended
    assert [r.trial for r in front.front] == ["d", "b"]  # a: dominated by d; c: by a
    assert len(front.hypervolume) == 4
    assert front.hypervolume == sorted(front.hypervolume) and front.hypervolume[1] == front.hypervolume[0]
    assert front.hypervolume[-1] > front.hypervolume[2] > 0
    table = front_markdown(front)
    assert "| (teacher) | reference point | 0.15 | 1 |" in table and "| d | #d | 0.18 | 0.7 |" in table
    assert "stopped" not in table and "| a |" not in table


def test_reference_point_is_the_teacher_else_the_baseline() -> None:
    objectives = ["sprite_kid", "latency_ratio"]
    assert reference_from_metrics({"teacher_sprite_kid": 0.1, "teacher_latency_ms": 40.0, "baseline_sprite_kid": 0.4,
                                   "baseline_latency_ratio": 0.5}, objectives) == Reference(
        "teacher", {"sprite_kid": 0.1, "latency_ratio": 1.0})  # a ratio to the teacher is 1 for the teacher
    # The distill trainer's baseline evaluation measures the teacher beside the untrained student.
    assert reference_from_metrics({"baseline_teacher_sprite_kid": 0.2, "baseline_teacher_latency_ms": 40.0},
                                  objectives) == Reference("teacher", {"sprite_kid": 0.2, "latency_ratio": 1.0})
    assert reference_from_metrics({"baseline_recon_mse": 0.3, "baseline_kl": 2.0}, ["recon_mse", "kl"]) == Reference(
        "baseline", {"recon_mse": 0.3, "kl": 2.0})
    assert reference_from_metrics({"baseline_recon_mse": 0.3}, ["recon_mse", "kl"]) is None


def test_pareto_plot_draws_the_front_and_the_reference(tmp_path: Path) -> None:
    from PIL import Image

    from catsith_sweep.sweep.plots import pareto_plot

    points = [(0.20, 0.90), (0.25, 0.50), (0.30, 0.95), (0.18, 0.70)]
    path = pareto_plot(tmp_path / "plots" / "pareto_front.png", metrics=METRICS, modes=MODES, points=points,
                       on_front=[False, True, False, True], labels=["#1 a", "#2 b", "#3 c", "#4 d"],
                       reference=("teacher", (0.15, 1.0)))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 500
        colours = {c for _, c in image.convert("RGB").getcolors(1 << 20) or []}
    assert (31, 119, 180) in colours and (214, 39, 40) in colours  # the front (tab:blue), the teacher (tab:red)
    three = pareto_plot(tmp_path / "three.png", metrics=["a", "b", "c"], modes=["min", "max", "min"],
                        points=[(1.0, 2.0, 3.0), (2.0, 3.0, 1.0)], on_front=[True, True], labels=["x", "y"],
                        reference=None)
    with Image.open(three) as image:  # one panel per pair of objectives
        assert image.width > 3 * 600


def test_scheduler_judges_one_named_objective() -> None:
    from catsith_sweep.config.schema import Experiment

    exp = Experiment.model_validate({"name": "x", "trainer": "vae", "search": {
        "metric": ["recon_mse", "kl"], "mode": ["min", "max"], "scheduler": "asha", "scheduler_metric": "kl"}})
    assert exp.search.scheduler_objective() == ("kl", "max")
    default = exp.search.model_copy(update={"scheduler_metric": None})
    assert default.scheduler_objective() == ("recon_mse", "min")


# ---- promote: the distilled ONNX pipeline into CatSith's models folder ---------------------------------

@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ONNX SD pipeline (an untrained tiny pipeline through export_onnx_pipeline)."""
    import torch

    from catsith_sweep.export.onnx_pipeline import export_onnx_pipeline
    from catsith_sweep.models.builtin import build_untrained

    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("distill") / "export" / "onnx"
    return export_onnx_pipeline(build_untrained(["a red ship"]), out, resolution=32).directory


def _facts(run_id: str) -> dict[str, str]:
    return {"run_id": run_id, "chosen_by": "fastest-within 10%"}


def test_promoted_pipeline_is_written_whole_or_not_at_all(onnx_folder: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from catsith_sweep.layout import DISTILLED_MANIFEST
    from catsith_sweep.promote.distill import check_pipeline_folder, write_pipeline

    digests = check_pipeline_folder(onnx_folder, "run a")
    target = tmp_path / "models" / "catsith-tiny-sd"
    first = write_pipeline(target, onnx_folder, digests, _facts("a"))
    assert first.status == "written" and (target / "unet" / "model.onnx").is_file()
    assert json.loads((target / DISTILLED_MANIFEST).read_text())["sha256"] == digests
    assert write_pipeline(target, onnx_folder, digests, _facts("a")).status == "already_present"

    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    copied: list[str] = []
    real_copytree = shutil.copytree

    def failing_copy(src: str, dst: str) -> str:
        if len(copied) == 3:  # part-way through the folder
            raise OSError(28, "No space left on device")
        copied.append(src)
        return shutil.copy2(src, dst)

    def copytree(src: Path, dst: Path, *args: object, **kwargs: object) -> object:
        if args:  # copytree's recursion into sub-folders passes copy_function on
            return real_copytree(src, dst, *args, **kwargs)  # type: ignore[arg-type]
        return real_copytree(src, dst, copy_function=failing_copy, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shutil, "copytree", copytree)
    with pytest.raises(OSError, match="No space left"):
        write_pipeline(target, onnx_folder, digests, {**_facts("b"), "trial": "b"})
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert copied and after == before  # the old pipeline, byte for byte
    assert sorted(p.name for p in target.parent.iterdir() if p.name.startswith(".catsith-tiny-sd.")) == [
        ".catsith-tiny-sd.lock"]  # no staging folder left behind


def test_pipeline_check_names_what_is_missing(onnx_folder: Path, tmp_path: Path) -> None:
    from catsith_sweep.errors import UserInputError
    from catsith_sweep.promote.distill import check_pipeline_folder

    broken = tmp_path / "onnx"
    shutil.copytree(onnx_folder, broken)
    (broken / "unet" / "model.onnx").unlink()
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(UserInputError, match=r"run x: the ONNX pipeline lacks unet/model.onnx, tokenizer/"):
        check_pipeline_folder(broken, "run x")


def test_promote_distill_trial_by_rule(onnx_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """`promote` of a distill sweep's trial, against a real MLflow store whose trials logged a real ONNX
    pipeline: the rule is stated, the folder lands in the models folder, the version becomes champion."""
    from catsith_sweep import tracking
    from catsith_sweep.cli import main
    from catsith_sweep.config.schema import Experiment
    from catsith_sweep.layout import DISTILLED_MANIFEST
    from catsith_sweep.trainers.base import write_resolved_config

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = tracking.client(uri)
    exp_id = c.create_experiment("distill-x", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = c.create_run(exp_id, run_name="sweep s1", tags={
        tracking.TAG_KIND: "sweep", tracking.TAG_SWEEP: "s1", "catsith.trainer": "distill",
        "catsith.metric": "sprite_kid,latency_ratio", "catsith.mode": "min,min"}).info.run_id
    c.log_metric(parent, "teacher_sprite_kid", 0.10)
    export = tmp_path / "export"
    shutil.copytree(onnx_folder, export / "onnx")
    write_resolved_config(export, Experiment.model_validate({"name": "distill-x", "trainer": "distill"}))
    runs = {}
    for trial, kid, ratio in (("slow", 0.10, 0.9), ("fast", 0.105, 0.5), ("too-rough", 0.2, 0.3)):
        run_id = c.create_run(exp_id, run_name=f"#{trial}", tags={
            tracking.PARENT_TAG: parent, tracking.TAG_TRIAL: trial, tracking.TAG_KIND: "trial",
            tracking.TAG_SWEEP: "s1", tracking.TAG_FINISHED: "true"}).info.run_id
        c.log_param(run_id, "config.trainer", "distill")
        c.log_metric(run_id, "sprite_kid", kid, step=4)
        c.log_metric(run_id, "latency_ratio", ratio, step=4)
        c.log_artifacts(run_id, str(export), "export")
        c.set_terminated(run_id, "FINISHED")
        runs[trial] = run_id
    c.set_terminated(parent, "FINISHED")

    monkeypatch.chdir(tmp_path)
    models = tmp_path / "models"
    assert main(["promote", "distill-x", "--tracking-uri", uri, "--models", str(models),
                 "--pick", "fastest-within", "10%"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "rule: fastest-within 10%: the best latency_ratio (min) among finished trials whose sprite_kid (min) " \
           "is within 10% of the teacher's 0.1 (<= 0.11)" in printed
    assert f"chose trial fast (run {runs['fast']})" in printed
    manifest = json.loads((models / "catsith-tiny-sd" / DISTILLED_MANIFEST).read_text())
    assert manifest["run_id"] == runs["fast"] and manifest["chosen_by"].startswith("fastest-within 10%")
    assert (models / "catsith-tiny-sd" / "unet" / "model.onnx").read_bytes() == (
        onnx_folder / "unet" / "model.onnx").read_bytes()
    from mlflow import MlflowClient

    champion = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias("distill-x", "champion")
    assert champion.run_id == runs["fast"] and champion.tags["catsith.metric"].startswith("fastest-within 10%")
