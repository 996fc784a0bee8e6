"""Where runs keep their artifacts, and fetching them back.

A trial run: `export/` (the trainer's export files and the resolved `config.yaml`), `samples/` (the
final sample grid: `samples.png`, `samples.safetensors` with the prompts in its header), `images/` (a
grid per evaluation, MLflow's image log), `error.txt` and `traceback.txt` when it failed.
A sweep's parent run: `inputs/` (the experiment and search-space files, the resolved config),
`baseline/`, `plots/`, `leaderboard.md`, `leaderboard.json`; a multi-objective sweep also
`pareto_front.md`, `pareto_front.json`, `plots/pareto_front.png` and the metric history `hypervolume`.
"""

from __future__ import annotations

import os
from pathlib import Path

EXPORT_DIR = "export"
CONFIG_FILE = "config.yaml"
"""The resolved experiment, in `export/`."""
EXPORT_CONFIG = f"{EXPORT_DIR}/{CONFIG_FILE}"
SAMPLES_DIR = "samples"
SAMPLES_PNG = f"{SAMPLES_DIR}/samples.png"
SAMPLES_TENSORS = f"{SAMPLES_DIR}/samples.safetensors"
ERROR_FILE = "error.txt"
TRACEBACK_FILE = "traceback.txt"
INPUTS_DIR = "inputs"
RESOLVED_CONFIG = "resolved_config.yaml"
BASELINE_DIR = "baseline"
PLOTS_DIR = "plots"
LEADERBOARD_MD = "leaderboard.md"
LEADERBOARD_JSON = "leaderboard.json"
PARETO_FRONT_MD = "pareto_front.md"
"""A multi-objective sweep's non-dominated finished trials as a table (on its parent run)."""
PARETO_FRONT_JSON = "pareto_front.json"
"""The same front as data: objectives, modes, reference point, hypervolume history, the trials."""
PARETO_FRONT_PNG = "pareto_front.png"
"""Under `plots/`: every finished trial's objectives, the front, the reference point."""
HYPERVOLUME = "hypervolume"
"""Parent-run metric history: the front's hypervolume after each finished trial (step = trials so far)."""


def download(uri: str, run_id: str, artifact_path: str, dst: Path) -> Path | None:
    """One artifact (file or folder) of a run into `dst`, or None when the run has no such artifact."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # progress bars for KiB files
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=artifact_path, dst_path=str(dst), tracking_uri=uri
        )
    except (MlflowException, OSError):
        return None
    path = Path(local)
    return path if path.exists() else None


def export_source(artifact_uri: str) -> str:
    """The model-version source of a trial: its run's `export/` folder."""
    return f"{artifact_uri.rstrip('/')}/{EXPORT_DIR}"
