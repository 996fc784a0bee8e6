"""MLflow tracking: the only place that imports MLflow.

One MLflow experiment per experiment `name`, one parent run per sweep, one child run per trial
(tagged `mlflow.parentRunId`). Trial processes log through `TrialLogger` with `MlflowClient` (no global
active run, so a reused Ray actor can host several trials); the sweep driver ends child runs with their
final status, since only it knows whether Ray stopped a trial early.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

DEFAULT_URI = "sqlite:///mlflow.db"
TAG_SWEEP = "catsith.sweep_id"
TAG_TRIAL = "catsith.trial_id"
TAG_KIND = "catsith.run_kind"
TAG_EARLY = "catsith.early_stopped"
TAG_ERROR = "catsith.error"
TAG_FINISHED = "catsith.trial_finished"
PARENT_TAG = "mlflow.parentRunId"


def normalize_uri(uri: str) -> str:
    """Make a relative sqlite path absolute: Ray trials run in other working directories."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        from pathlib import Path

        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def client(uri: str) -> Any:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    """The MLflow experiment's id, creating it when absent."""
    c = client(uri)
    found = c.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            c.restore_experiment(found.experiment_id)
        return str(found.experiment_id)
    try:
        return str(c.create_experiment(name))
    except Exception:  # created concurrently by another process
        found = c.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """`{"lora": {"rank": 4}}` -> `{"lora.rank": 4}` (lists stay values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return out


def find_trial_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
    c = client(uri)
    runs = c.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TAG_TRIAL}` = '{trial_id}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list[Any]:
    c = client(uri)
    return list(c.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                              max_results=5000))
