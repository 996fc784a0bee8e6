"""The MLflow Model Registry side of a promotion: one registered model per experiment, one version per
promoted run, and aliases instead of the stages MLflow 3 deprecates.

* A version's source is the run's `export` artifact dir (the trainer's export and the resolved config),
  with the run id attached, so the UI links a version to its trial.
* Version tags: the run's final metrics under their own names, plus `catsith.*` facts (sweep id, trial id,
  and what the promotion wrote: CatSith package hash and path, or the models folder and ONNX hashes).
* Alias `champion` moves to the promoted version; the version it left gets `previous` (it keeps its
  number and tags). A run that already has a version gets no second one: promoting it again only moves
  the aliases back to it if it is not the champion, and refreshes its tags if what it wrote changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from catsith_sweep.tracking import tags as t
from catsith_sweep.tracking.artifacts import export_source
from catsith_sweep.tracking.rows import TrialRow

CHAMPION = "champion"
PREVIOUS = "previous"


@dataclass(frozen=True)
class VersionResult:
    """What the registry step did."""

    model: str
    version: str
    created: bool
    """False: the run already had this version (nothing new was registered)."""
    champion_moved: bool
    previous: str | None
    """The version that now holds the alias `previous`, when the champion moved."""
    retagged: list[str]
    """Tags of an existing version that were updated (what it wrote changed)."""


def version_tags(row: TrialRow, sweep_id: str, metric: str, mode: str, facts: Mapping[str, str]) -> dict[str, str]:
    """The run's final metrics (full precision, by their own names), its sweep and trial, the metric
    that chose it, and `facts` (keys from `tags`: what the promotion wrote)."""
    return {**{key: repr(float(value)) for key, value in sorted(row.metrics.items())},
            t.SWEEP: sweep_id, t.TRIAL: row.trial, t.METRIC_CHOICE: f"{metric} ({mode})", **facts}


def _client(uri: str) -> Any:
    """An MlflowClient whose model registry is the tracking store (explicit: never a remote default)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _ensure_registered_model(c: Any, name: str, description: str, kind: str) -> None:
    """Create the registered model unless it exists (a concurrent creation is fine)."""
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
        return
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        c.create_registered_model(name, description=description, tags={t.KIND: kind})
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _alias_version(c: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(c.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _existing_version(c: Any, name: str, run_id: str) -> Any | None:
    """The newest version of model `name` registered from run `run_id`, if any."""
    found = [v for v in c.search_model_versions(f"run_id = '{run_id}'") if v.name == name]
    return max(found, key=lambda v: int(v.version)) if found else None


def register_run(uri: str, name: str, row: TrialRow, tags: Mapping[str, str], description: str, *,
                 kind: str, model_description: str) -> VersionResult:
    """Register `row`'s export as a version of `name` (once per run) and make it the champion.
    `kind` and `model_description` are used when the registered model is created."""
    c = _client(uri)
    _ensure_registered_model(c, name, model_description, kind)
    found = _existing_version(c, name, row.run_id)
    retagged: list[str] = []
    if found is None:
        version = str(c.create_model_version(name, export_source(row.artifact_uri), run_id=row.run_id,
                                             tags=dict(tags), description=description).version)
    else:
        version = str(found.version)
        for key, value in tags.items():
            if found.tags.get(key) != value:
                c.set_model_version_tag(name, version, key, value)
                retagged.append(key)
    champion = _alias_version(c, name, CHAMPION)
    previous = None
    if champion != version:
        if champion is not None:
            c.set_registered_model_alias(name, PREVIOUS, champion)
            previous = champion
        c.set_registered_model_alias(name, CHAMPION, version)
    return VersionResult(name, version, found is None, champion != version, previous, retagged)
