"""Every MLflow tag name catsith_sweep writes or reads, in one place.

Runs: one parent run per sweep (`run_kind=sweep`) and one child run per trial (`run_kind=trial`,
`mlflow.parentRunId` = the parent). Registered models and their versions get the `KIND`, `SWEEP`,
`TRIAL` and promotion tags below.
"""

from __future__ import annotations

PARENT = "mlflow.parentRunId"
"""MLflow's own tag: the UI nests a child run under this parent."""

# On every catsith run.
SWEEP = "catsith.sweep_id"
RUN_KIND = "catsith.run_kind"
"""`sweep` (the parent run) or `trial` (a child)."""
GIT_COMMIT = "catsith.git_commit"
DATASET = "catsith.dataset"
"""Fingerprint of the dataset the sweep trained on."""

# On the sweep's parent run.
TRAINER = "catsith.trainer"
METRIC = "catsith.metric"
"""The searched metrics, comma-separated; the first ranks trials."""
MODE = "catsith.mode"
"""`min`/`max` per searched metric, comma-separated."""
BEST_TRIAL = "catsith.best_trial"
BEST_RUN_ID = "catsith.best_run_id"
SWEEP_STATUS = "catsith.sweep_status"
"""How the sweep ended: finished, interrupted, failed (the run's MLflow status says it too)."""
RESUMED = "catsith.resumed"
"""Why (and when) an unfinished sweep was continued, one line per resume."""
BASELINE_SOURCE = "catsith.baseline_source"
"""How the baseline was made: evaluated now, or reused from the cache (with its key)."""
ENDED_BY = "catsith.ended_by"
"""Why a sweep or trial run ended other than by finishing (Ctrl-C, SIGTERM, the driver's error)."""

# On a trial's child run.
TRIAL = "catsith.trial_id"
"""Ray Tune's trial id (the run's name is the person-readable `#3 rank=4 ...`)."""
EARLY = "catsith.early_stopped"
"""`true`: the scheduler (ASHA, median) stopped the trial before its budget ended."""
ERROR = "catsith.error"
"""`Type: message` of the exception a trial failed with (full traceback: artifact `traceback.txt`)."""
FINISHED = "catsith.trial_finished"
"""`true` once the trial reached its final report; `false` when it ended otherwise."""

# On registered models and model versions.
KIND = "catsith.kind"
"""`lora`, `sprite_vae` or `distilled_sd` (registered models)."""
METRIC_CHOICE = "catsith.metric"
"""`<metric> (<mode>)` that chose a promoted version."""
PACKAGE_HASH = "catsith.package_hash"
PACKAGE_PATH = "catsith.package_path"
PACKAGE_SLUG = "catsith.package_slug"
PACKAGE_NAME = "catsith.package_name"
MODELS_DIR = "catsith.models_dir"
ENCODER_SHA256 = "catsith.encoder_sha256"
DECODER_SHA256 = "catsith.decoder_sha256"
PIPELINE_SHA256 = "catsith.pipeline_sha256"
"""A promoted ONNX pipeline: sha256 over its graphs' own hashes (each is in its manifest)."""

KIND_SWEEP = "sweep"
KIND_TRIAL = "trial"
