"""A distill trial's ONNX pipeline -> a folder in CatSith's models folder, plus the MLflow Model Registry
version (the diffusers student and the ONNX pipeline, the trial's `export/`) with the `champion` alias.

What a distill trial logs under `export/` (trainers/distill.py): `onnx/` (the student pipeline in
optimum's Stable Diffusion layout, export/onnx_pipeline.py), `diffusers/` (the same student as a diffusers
pipeline), `distill.json` and `config.yaml`.

`promote` writes `onnx/` to `<models>/<name>/` (`--models`, else `promote.models_dir`, else `models/`;
`--name`, else `catsith-tiny-sd`, the folder CatSith's integration test loads), with
`catsith_pipeline.json` beside `model_index.json` (run, sweep, rule, metrics, sha256 of every graph). The
graphs are checked on the way in (every component's `model.onnx` loads in onnxruntime with the inputs
CatSith feeds it). The whole folder is staged beside the target and swapped in by renames
(io.replace_dir), so CatSith sees the old pipeline or the new one, never a mix; a failed copy leaves the
old folder as it was. A lock serialises promotions into one folder; promoting the run already there
rewrites nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catsith_sweep.config.schema import PromoteSection
from catsith_sweep.errors import UserInputError
from catsith_sweep.export.onnx_pipeline import COMPONENTS, MODEL_FILE
from catsith_sweep.io import file_lock, staged_dir
from catsith_sweep.layout import (
    DISTILLED_MANIFEST,
    DISTILLED_MODELS_NAME,
    MODEL_INDEX,
    ONNX_PIPELINE_DIR,
    RESOLVED_CONFIG,
)
from catsith_sweep.promote.lora import logged_experiment
from catsith_sweep.promote.select import Choice
from catsith_sweep.promote.vae import holds_run, resolve_models_dir, sha256_file
from catsith_sweep.tracking import artifacts, tags
from catsith_sweep.tracking.model_registry import VersionResult, register_run, version_tags

FORMAT_NAME = "catsith-onnx-sd-pipeline"
INPUTS = {"text_encoder": ["input_ids"], "unet": ["sample", "timestep", "encoder_hidden_states"],
          "vae_encoder": ["sample"], "vae_decoder": ["latent_sample"]}
"""What optimum's ONNX SD layout feeds each graph (export/onnx_pipeline.py)."""
REQUIRED_DIRS = ("tokenizer", "scheduler")


def check_pipeline_folder(folder: Path, what: str) -> dict[str, str]:
    """Check `folder` is an ONNX SD pipeline CatSith runs; returns sha256 per graph (`unet/model.onnx`...)."""
    import onnxruntime as ort

    files = (MODEL_INDEX, *(f"{c}/{MODEL_FILE}" for c in COMPONENTS))
    missing = [name for name in files if not (folder / name).is_file()]
    missing += [f"{d}/" for d in REQUIRED_DIRS if not (folder / d).is_dir()]
    if missing:
        raise UserInputError(f"{what}: the ONNX pipeline lacks {', '.join(missing)} (optimum's Stable Diffusion "
                             "layout: model_index.json, text_encoder/unet/vae_encoder/vae_decoder model.onnx, "
                             "tokenizer/, scheduler/)")
    digests = {}
    for component in COMPONENTS:
        graph = folder / component / MODEL_FILE
        try:
            session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise UserInputError(f"{what}: {component}/{MODEL_FILE} does not load in onnxruntime ({exc})") from exc
        names = [i.name for i in session.get_inputs()]
        if names != INPUTS[component]:
            raise UserInputError(f"{what}: {component}/{MODEL_FILE} takes inputs {names}, an ONNX SD runtime "
                                 f"feeds {INPUTS[component]}")
        digests[f"{component}/{MODEL_FILE}"] = sha256_file(graph)
    return digests


@dataclass(frozen=True)
class DistillTrialFiles:
    """A distill trial's ONNX pipeline, downloaded and checked."""

    folder: Path
    digests: dict[str, str]
    experiment: Any
    summary: dict[str, Any] = field(default_factory=dict)


def download_distill_trial(uri: str, run_id: str, dst: Path) -> DistillTrialFiles:
    """Fetch a distill trial's `export/onnx/` and config into `dst` and check them (UserInputError if not)."""
    config = artifacts.download(uri, run_id, artifacts.EXPORT_CONFIG, dst / "config")
    if config is None:
        raise UserInputError(f"run {run_id} has no {artifacts.EXPORT_CONFIG} artifact: it exported nothing "
                             "(trials log their exports when they finish)")
    experiment = logged_experiment(config, run_id)
    if experiment.trainer != "distill":
        raise UserInputError(f"run {run_id} trained a `{experiment.trainer}` model, not a distilled student")
    folder = artifacts.download(uri, run_id, f"{artifacts.EXPORT_DIR}/{ONNX_PIPELINE_DIR}", dst / "pipeline")
    if folder is None or not folder.is_dir():
        raise UserInputError(f"run {run_id} logged no {artifacts.EXPORT_DIR}/{ONNX_PIPELINE_DIR}/ folder: add "
                             f"{ONNX_PIPELINE_DIR} to export.formats and run the trial again")
    summary_path = artifacts.download(uri, run_id, f"{artifacts.EXPORT_DIR}/distill.json", dst / "summary")
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path is not None else {}
    return DistillTrialFiles(folder, check_pipeline_folder(folder, f"run {run_id}"), experiment, summary)


@dataclass(frozen=True)
class PipelineResult:
    """What the models-folder step did."""

    directory: Path
    status: str
    """`written`, or `already_present` (the folder already held exactly this run's graphs)."""
    manifest: dict[str, Any]


def pipeline_digest(digests: dict[str, str]) -> str:
    """One sha256 for the whole pipeline: over its graphs' hashes, in name order."""
    return hashlib.sha256("".join(f"{k}={v}\n" for k, v in sorted(digests.items())).encode()).hexdigest()


def write_pipeline(directory: Path, source: Path, digests: dict[str, str], facts: dict[str, Any]) -> PipelineResult:
    """Put the pipeline folder `source` at `directory` with its manifest (see the module docstring)."""
    directory = directory.expanduser().resolve()
    manifest: dict[str, Any] = {"format": FORMAT_NAME, "format_version": 1, "layout": "optimum onnx stable-diffusion",
                                "sha256": digests, **facts}
    with file_lock(directory.parent / f".{directory.name}.lock"):
        if holds_run(directory, DISTILLED_MANIFEST, manifest):
            old = json.loads((directory / DISTILLED_MANIFEST).read_text(encoding="utf-8"))
            return PipelineResult(directory, "already_present", old)
        manifest["promoted_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with staged_dir(directory) as staging:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            if digests != {k: sha256_file(staging / k) for k in digests}:
                raise UserInputError(f"{source}: a graph changed while it was copied; nothing was promoted")
            (staging / DISTILLED_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return PipelineResult(directory, "written", manifest)


@dataclass(frozen=True)
class DistillOutcome:
    """What a distill promotion did, for the command to report."""

    choice: Choice
    pipeline: PipelineResult
    version: VersionResult

    @property
    def nothing_new(self) -> bool:
        return self.pipeline.status == "already_present" and not self.version.created


def promote_distill(uri: str, experiment_name: str, choice: Choice, *, name: str | None = None,
                    models_dir: Path | None = None, file_section: PromoteSection | None = None) -> DistillOutcome:
    """Write the chosen distill trial's ONNX pipeline into the models folder and register it as champion."""
    with tempfile.TemporaryDirectory(prefix="catsith_promote_distill_") as tmp:
        files = download_distill_trial(uri, choice.run_id, Path(tmp))
        directory = resolve_models_dir(files.experiment, file_section, models_dir) / (name or DISTILLED_MODELS_NAME)
        rule = choice.rule or f"best {choice.metric} ({choice.mode})"
        facts = {"run_id": choice.run_id, "experiment": experiment_name, "sweep_id": choice.sweep_id,
                 "trial": choice.trial, "chosen_by": rule, "student": files.summary,
                 "metrics": {k: float(v) for k, v in sorted(choice.row.metrics.items())},
                 "config": RESOLVED_CONFIG}
        pipeline = write_pipeline(directory, files.folder, files.digests, facts)
    version_facts = version_tags(choice.row, choice.sweep_id, choice.metric, choice.mode, {
        tags.MODELS_DIR: str(pipeline.directory), tags.PIPELINE_SHA256: pipeline_digest(files.digests),
        **({tags.METRIC_CHOICE: rule[:5000]} if choice.rule else {}),
    })
    level = files.summary.get("level", getattr(files.experiment.distill, "level", "?"))
    description = (f"distilled student ({level}) of {files.summary.get('teacher', 'the teacher')}: trial "
                   f"{choice.trial} of sweep {choice.sweep_id}, chosen by {rule}")
    version = register_run(uri, name or experiment_name, choice.row, version_facts, description[:5000],
                           kind="distilled_sd", model_description="Distilled Stable Diffusion students "
                           f"(diffusers and ONNX pipeline) of the catsith_sweep experiment `{experiment_name}`")
    return DistillOutcome(choice, pipeline, version)
