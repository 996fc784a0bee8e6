"""The MLflow Model Registry side of a promotion: one registered model per experiment, one version per
promoted run, and aliases instead of the stages MLflow 3 deprecates.

* A version's source is the run's `export` artifact dir (the PEFT safetensors and the resolved config),
  with the run id attached, so the UI links a version to its trial.
* Version tags: the run's final metrics under their own names, plus `catsith.*` facts (sweep id, trial id,
  CatSith package hash as hex, package path and slug).
* Alias `champion` moves to the promoted version; the version it left gets `previous` (it keeps its
  number and tags). A run that already has a version gets no second one: promoting it again only moves
  the aliases back to it if it is not the champion, and refreshes its package tags if the package changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CHAMPION = "champion"
PREVIOUS = "previous"
EXPORT_PATH = "export"


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
    """Tags of an existing version that were updated (its package changed)."""


def version_tags(metrics: Mapping[str, float], extra: Mapping[str, str]) -> dict[str, str]:
    """The run's final metrics (full precision, by their own names) plus `extra` (the catsith.* facts)."""
    return {**{key: repr(float(value)) for key, value in sorted(metrics.items())}, **extra}


def registry_client(uri: str) -> Any:
    """An MlflowClient whose model registry is the tracking store (explicit: never a remote default)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_registered_model(c: Any, name: str, description: str) -> None:
    """Create the registered model unless it exists (a concurrent creation is fine)."""
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
        return
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        c.create_registered_model(name, description=description, tags={"catsith.kind": "lora"})
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _alias_version(c: Any, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(c.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def existing_version(c: Any, name: str, run_id: str) -> Any | None:
    """The newest version of model `name` registered from run `run_id`, if any."""
    found = [v for v in c.search_model_versions(f"run_id = '{run_id}'") if v.name == name]
    return max(found, key=lambda v: int(v.version)) if found else None


def register_run(c: Any, name: str, run: Any, tags: Mapping[str, str], description: str) -> VersionResult:
    """Register `run`'s export as a version of `name` (once per run) and make it the champion."""
    ensure_registered_model(c, name, f"LoRA champions of the catsith_sweep experiment `{name}`")
    run_id = run.info.run_id
    found = existing_version(c, name, run_id)
    retagged: list[str] = []
    if found is None:
        source = f"{run.info.artifact_uri.rstrip('/')}/{EXPORT_PATH}"
        version = str(c.create_model_version(name, source, run_id=run_id, tags=dict(tags),
                                             description=description).version)
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
