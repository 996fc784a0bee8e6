"""Names of the files and folders catsith_sweep writes and reads back, each defined once.

A writer and its readers (a trainer and `promote`, `base build` and `model.base`, a trial and its
tracking) meet here, so renaming an artifact is one edit. Dataset folders (images/, captions/,
metadata.json) are the CatSith format and live in `data.metadata`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

# --- the cache (`CATSITH_CACHE`, else the platform's user cache folder) ------------------------------
CACHE_ENV = "CATSITH_CACHE"
BASES_DIR = "bases"
"""Built builtin bases: `bases/<name>-v<version>/`, each a `base build` folder (see below)."""
SYNTH_DIR = "synth"
"""Generated synthetic datasets, one folder per (seed, variants, size, style)."""
SPRITE_NETS_DIR = "sprite_nets"
"""Sprite feature networks, one folder per dataset fingerprint."""


def default_cache_dir() -> Path:
    """Where built bases, synth datasets and sprite networks are cached (`CATSITH_CACHE` overrides)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("catsith_sweep"))


def cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    """`model.cache_dir` when set, else the default cache folder."""
    return Path(cache_dir) if cache_dir else default_cache_dir()


# --- a trial's work folder ----------------------------------------------------------------------------
EXPORT_DIR = "export"
CHECKPOINT_DIR = "checkpoint"
EVAL_DIR = "eval"
RESOLVED_CONFIG = "config.yaml"
"""The resolved experiment, written beside every checkpoint and export (and logged with the export)."""
TRIAL_FACTS = "trial.json"
SAMPLES_DIR = "samples"
"""Sample grids: a trial logs them under this artifact folder; a built base keeps its last ones here."""
SAMPLES_GRID = "samples.png"
BASE_METRICS_FILE = "metrics.json"
"""A built base's last held-out evaluation ({step, split, metrics}), beside its `samples/`."""

# --- a base model folder (what `base build --out DIR` writes) ----------------------------------------
BASE_PIPELINE_DIR = "diffusers"
"""The diffusers pipeline inside a built base; `config.yaml` and `samples/` sit beside it."""
MODEL_INDEX = "model_index.json"
"""The file that makes a folder a diffusers pipeline."""
BASE_INFO = "catsith_base.json"

# --- SpriteVAE exports and the promoted models folder (catsith-formats.md §4) -------------------------
VAE_ENCODER_ONNX = "sprite_vae_encoder.onnx"
VAE_DECODER_ONNX = "sprite_vae_decoder.onnx"
ONNX_CHECK = "onnx_check.json"
"""onnxruntime against torch at export time; `promote` refuses a VAE whose check did not pass."""
VAE_WEIGHTS = "sprite_vae.safetensors"
VAE_CONFIG = "sprite_vae_config.json"
VAE_MODELS_MANIFEST = "sprite_vae.json"
"""Beside the two graphs in CatSith's models folder: shape, run, metrics, sha256 of each graph."""

# --- LoRA exports and registry packages ---------------------------------------------------------------
PEFT_LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
LoraCategory = Literal["Aesthetic", "Entity", "Effects", "Environment", "Color"]
LORA_CATEGORIES: tuple[LoraCategory, ...] = get_args(LoraCategory)
"""CatSith's LoRA categories in its order: the index is the byte its package hash uses."""
KOHYA_LORA_SUFFIX = ".kohya.safetensors"
CATSITH_LORA_SUFFIX = ".lora.json"
"""An export is `<experiment name><suffix>`; readers glob `*<suffix>`."""

# --- distilled pipelines (trainer `distill`) and the promoted ONNX folder (catsith-formats.md §3) --------
ONNX_PIPELINE_DIR = "onnx"
"""The distill trainer's export key and folder for the student as an ONNX pipeline (optimum's layout,
export/onnx_pipeline.py): logged as the trial artifact `export/onnx/`, read back by `promote`."""
DIFFUSERS_PIPELINE_DIR = "diffusers"
"""The distill trainer's export key and folder for the student as a diffusers pipeline."""
DISTILLED_MODELS_NAME = "catsith-tiny-sd"
"""The folder in CatSith's models folder that `promote` writes a distilled ONNX pipeline to by default
(CatSith's integration test loads `models/catsith-tiny-sd`)."""
DISTILLED_MANIFEST = "catsith_pipeline.json"
"""Beside the pipeline in that folder: run, metrics, sha256 of each graph."""
