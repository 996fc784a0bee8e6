"""A SpriteVAE trial's ONNX export -> a CatSith models folder (catsith-formats.md §4), plus the MLflow
Model Registry version with the `champion` alias, as for LoRA.

What a VAE trial logs under `export/` (see `trainers/vae.py`): `sprite_vae_encoder.onnx`,
`sprite_vae_decoder.onnx`, `onnx_check.json` (onnxruntime against torch, passed), `sprite_vae_config.json`
(the model's shape), `sprite_vae.safetensors` and `config.yaml` (the resolved experiment).

CatSith looks the two graphs up by name in `models/`, so they are written under exactly those names,
with `sprite_vae.json` beside them (latent_dim, input size, run id, metrics, sha256 of each file). The
files are checked again on the way in (names, shapes, one decode by onnxruntime), staged in a temporary
folder inside the models folder, then renamed into place one by one: encoder, decoder, and the JSON
last, so a reader never sees a partial file, and a JSON whose hashes match both graphs marks a complete
set (the only moment a reader could see a new encoder beside the old decoder is between two renames;
the JSON's hashes tell). A lock file serialises concurrent promotions into one folder. Promoting the
run that is already there rewrites nothing.
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

from catsith_sweep.config.schema import Experiment, PromoteSection
from catsith_sweep.errors import UserInputError
from catsith_sweep.io import atomic_path, atomic_write_text, file_lock
from catsith_sweep.promote.lora import logged_experiment
from catsith_sweep.promote.select import Choice
from catsith_sweep.tracking import TrialRow, artifacts, tags
from catsith_sweep.tracking.model_registry import VersionResult, register_run, version_tags

ENCODER_FILE = "sprite_vae_encoder.onnx"
DECODER_FILE = "sprite_vae_decoder.onnx"
MANIFEST_FILE = "sprite_vae.json"
CHECK_FILE = "onnx_check.json"
MODEL_CONFIG_FILE = "sprite_vae_config.json"
FORMAT_NAME = "catsith-sprite-vae"
LOCK_FILE = ".sprite_vae.lock"


def trial_trainer(uri: str, row: TrialRow) -> str:
    """Which trainer a trial ran: its logged `config.trainer` param, else its exported config.yaml.
    "lora" when neither says (the LoRA path then reports what is missing)."""
    if row.trainer:
        return row.trainer
    with tempfile.TemporaryDirectory(prefix="catsith_trainer_") as tmp:
        config = artifacts.download(uri, row.run_id, artifacts.EXPORT_CONFIG, Path(tmp))
        if config is None:
            return "lora"
        return logged_experiment(config, row.run_id).trainer


@dataclass(frozen=True)
class VaeTrialFiles:
    """A VAE trial's export, downloaded and checked."""

    experiment: Experiment
    encoder: Path
    decoder: Path
    latent_dim: int
    input_size: tuple[int, int, int]
    """(channels, height, width) of the encoder's `image` input."""
    onnx_check: dict[str, Any]
    model_config: dict[str, Any] = field(default_factory=dict)


def download_vae_trial(uri: str, run_id: str, dst: Path) -> VaeTrialFiles:
    """Fetch a VAE trial's export into `dst` and check it is what CatSith runs (UserInputError if not)."""
    export = artifacts.download(uri, run_id, artifacts.EXPORT_DIR, dst)
    if export is None or not (export / artifacts.CONFIG_FILE).is_file():
        raise UserInputError(f"run {run_id} has no {artifacts.EXPORT_CONFIG} artifact: it exported nothing "
                             "(trials log their exports when they finish)")
    experiment = logged_experiment(export / artifacts.CONFIG_FILE, run_id)
    if experiment.trainer != "vae":
        raise UserInputError(f"run {run_id} trained a `{experiment.trainer}` model, not a SpriteVAE")
    missing = [name for name in (ENCODER_FILE, DECODER_FILE, CHECK_FILE) if not (export / name).is_file()]
    if missing:
        raise UserInputError(f"run {run_id} exported no {', '.join(missing)}: add onnx to export.formats and "
                             "run the trial again")
    check = json.loads((export / CHECK_FILE).read_text(encoding="utf-8"))
    if check.get("passed") is not True:
        raise UserInputError(f"run {run_id}: its ONNX export did not pass the onnxruntime check ({check})")
    model_config: dict[str, Any] = {}
    if (export / MODEL_CONFIG_FILE).is_file():
        model_config = json.loads((export / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
    latent_dim, input_size = check_onnx_pair(export / ENCODER_FILE, export / DECODER_FILE)
    return VaeTrialFiles(experiment, export / ENCODER_FILE, export / DECODER_FILE, latent_dim, input_size, check,
                         model_config)


def check_onnx_pair(encoder: Path, decoder: Path) -> tuple[int, tuple[int, int, int]]:
    """(latent_dim, (channels, height, width)) of an encoder/decoder pair, after checking the names and
    shapes of catsith-formats.md §4 and decoding two latents with onnxruntime."""
    import numpy as np
    import onnxruntime as ort

    def session(path: Path) -> Any:
        try:
            return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise UserInputError(f"{path.name}: onnxruntime cannot load it ({exc})") from exc

    enc, dec = session(encoder), session(decoder)
    enc_in, dec_in = enc.get_inputs(), dec.get_inputs()
    names = ([i.name for i in enc_in], [o.name for o in enc.get_outputs()],
             [i.name for i in dec_in], [o.name for o in dec.get_outputs()])
    if names != (["image"], ["mu", "log_var"], ["latent"], ["image"]):
        raise UserInputError(f"{encoder.name} / {decoder.name}: inputs and outputs are {names}, CatSith expects "
                             "image -> (mu, log_var) and latent -> image")
    image_shape, latent_shape = enc_in[0].shape, dec_in[0].shape
    if len(image_shape) != 4 or len(latent_shape) != 2 or not all(isinstance(d, int) for d in
                                                                  [*image_shape[1:], latent_shape[1]]):
        raise UserInputError(f"unexpected ONNX input shapes: image {image_shape}, latent {latent_shape}")
    channels, height, width = (int(d) for d in image_shape[1:])
    latent_dim = int(latent_shape[1])
    if enc.get_outputs()[0].shape[1] != latent_dim:
        raise UserInputError(f"{encoder.name} gives {enc.get_outputs()[0].shape[1]}-dim latents, {decoder.name} "
                             f"takes {latent_dim}: not one model")
    (image,) = dec.run(["image"], {"latent": np.zeros((2, latent_dim), dtype=np.float32)})
    if image.shape != (2, channels, height, width) or not np.all((image >= 0) & (image <= 1)):
        raise UserInputError(f"{decoder.name} decodes to shape {image.shape} (or outside [0, 1]), expected "
                             f"(2, {channels}, {height}, {width}) in [0, 1]")
    return latent_dim, (channels, height, width)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelsResult:
    """What the models-folder step did."""

    directory: Path
    status: str
    """`written`, or `already_present` (the folder already held exactly this run's files)."""
    files: dict[str, Path]
    manifest: dict[str, Any]


def holds_run(directory: Path, manifest_file: str, manifest: dict[str, Any]) -> bool:
    """True when `directory` already holds this run's files: its `manifest_file` names the same run and
    the same hashes, and every file hashes as recorded (a promote that would rewrite nothing)."""
    try:
        old = json.loads((directory / manifest_file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if old.get("run_id") != manifest["run_id"] or old.get("sha256") != manifest["sha256"]:
        return False
    return all((directory / name).is_file() and sha256_file(directory / name) == digest
               for name, digest in manifest["sha256"].items())


def write_models(directory: Path, files: VaeTrialFiles, facts: dict[str, Any]) -> ModelsResult:
    """Put the two graphs and `sprite_vae.json` into `directory` (see the module docstring)."""
    directory = directory.expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    digests = {ENCODER_FILE: sha256_file(files.encoder), DECODER_FILE: sha256_file(files.decoder)}
    manifest: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": 1,
        "latent_dim": files.latent_dim,
        "input_size": list(files.input_size),
        "encoder": {"file": ENCODER_FILE, "input": "image", "outputs": ["mu", "log_var"]},
        "decoder": {"file": DECODER_FILE, "input": "latent", "output": "image"},
        "sha256": digests,
        **facts,
        "onnx_check": files.onnx_check,
    }
    targets = {ENCODER_FILE: directory / ENCODER_FILE, DECODER_FILE: directory / DECODER_FILE,
               MANIFEST_FILE: directory / MANIFEST_FILE}
    with file_lock(directory / LOCK_FILE):
        if holds_run(directory, MANIFEST_FILE, manifest):
            old = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
            return ModelsResult(directory, "already_present", targets, old)
        manifest["promoted_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        # Each file lands whole (written beside its target, fsynced, renamed); the JSON last: it
        # completes the set, and `_present` checks both graphs' hashes against it.
        for source, name in ((files.encoder, ENCODER_FILE), (files.decoder, DECODER_FILE)):
            with atomic_path(targets[name]) as tmp:
                shutil.copyfile(source, tmp)
        atomic_write_text(targets[MANIFEST_FILE], json.dumps(manifest, indent=2) + "\n")
    return ModelsResult(directory, "written", targets, manifest)


def resolve_models_dir(logged: Experiment, file_section: PromoteSection | None, flag: Path | None) -> Path:
    """--models > an experiment file's explicit `promote.models_dir` > the trial's logged one."""
    if flag is not None:
        return Path(flag)
    if file_section is not None and "models_dir" in file_section.model_fields_set:
        return Path(file_section.models_dir)
    return Path(logged.promote.models_dir)


@dataclass(frozen=True)
class VaeOutcome:
    """What a VAE promotion did, for the command to report."""

    choice: Choice
    models: ModelsResult
    version: VersionResult
    notes: list[str] = field(default_factory=list)

    @property
    def nothing_new(self) -> bool:
        return self.models.status == "already_present" and not self.version.created


def promote_vae(uri: str, experiment_name: str, choice: Choice, *, name: str | None = None,
                models_dir: Path | None = None, file_section: PromoteSection | None = None) -> VaeOutcome:
    """Write the chosen VAE trial's graphs into the models folder and register it as the champion."""
    with tempfile.TemporaryDirectory(prefix="catsith_promote_vae_") as tmp:
        files = download_vae_trial(uri, choice.run_id, Path(tmp))
        directory = resolve_models_dir(files.experiment, file_section, models_dir)
        value = choice.value
        facts = {
            "run_id": choice.run_id,
            "experiment": experiment_name,
            "sweep_id": choice.sweep_id,
            "trial": choice.trial,
            "metric": {"name": choice.metric, "mode": choice.mode, "value": value},
            "metrics": {k: float(v) for k, v in sorted(choice.row.metrics.items())},
            "model": files.model_config,
        }
        models = write_models(directory, files, facts)
    digests = models.manifest["sha256"]
    version_facts = version_tags(choice.row, choice.sweep_id, choice.metric, choice.mode, {
        tags.MODELS_DIR: str(models.directory),
        tags.ENCODER_SHA256: digests[ENCODER_FILE],
        tags.DECODER_SHA256: digests[DECODER_FILE],
    })
    shown = f"{value:.5g}" if value is not None else "n/a"
    assert files.experiment.vae is not None  # filled for trainer: vae
    beta = files.experiment.vae.beta
    description = (f"SpriteVAE latent_dim {files.latent_dim}, beta {beta:g}; trial {choice.trial} of sweep "
                   f"{choice.sweep_id}, {choice.metric} {shown} ({choice.mode})")
    version = register_run(uri, name or experiment_name, choice.row, version_facts, description, kind="sprite_vae",
                           model_description=f"SpriteVAE champions of the catsith_sweep experiment "
                                             f"`{experiment_name}`")
    return VaeOutcome(choice, models, version)
