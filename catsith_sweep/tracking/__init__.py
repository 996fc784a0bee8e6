"""MLflow tracking: the only package that imports MLflow or knows its tags, queries and artifact layout.

One MLflow experiment per experiment `name`, one parent run per sweep, one child run per trial
(tagged `mlflow.parentRunId`). Trial processes log through `TrialLogger` with `MlflowClient` (no global
active run, so a reused Ray actor can host several trials); the sweep driver ends child runs with their
final status, since only it knows whether Ray stopped a trial early.

Modules: `tags` (every tag name), `rows` (typed views: `SweepRun`, `TrialRow`, `Outcome`), `queries`
(reading sweeps and trials), `sweep_runs` (writing the parent run, ending runs), `artifacts` (artifact
paths and downloads), `model_registry` (registered models, versions, aliases), `trial_logger` (a trial's
own logging).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from catsith_sweep.tracking import tags
from catsith_sweep.tracking.rows import Outcome, SweepRun, SweepStatus, TrialRow, count_outcomes, rank

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

DEFAULT_URI = "sqlite:///mlflow.db"
# Short names kept for the trial logger and tests.
TAG_SWEEP = tags.SWEEP
TAG_TRIAL = tags.TRIAL
TAG_KIND = tags.RUN_KIND
TAG_EARLY = tags.EARLY
TAG_ERROR = tags.ERROR
TAG_FINISHED = tags.FINISHED
PARENT_TAG = tags.PARENT

_SECRET_QUERY_KEYS = ("token", "password", "passwd", "secret", "key", "signature", "sig", "credential")


def normalize_uri(uri: str) -> str:
    """Make a relative sqlite path absolute: Ray trials run in other working directories."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        from pathlib import Path

        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def redact_uri(uri: str) -> str:
    """`uri` safe to print or log: a password or token in it becomes `***`.

    `https://user:token@host/x` -> `https://user:***@host/x`; `https://token@host` -> `https://***@host`;
    query values named like a secret (`?token=...`, `?sig=...`) -> `***`. Anything else is unchanged.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if has_password else f"***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if any(s in k.lower() for s in _SECRET_QUERY_KEYS) else v) for k, v in pairs],
                          safe="*")
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


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


def artifact_location(uri: str, experiment_id: str) -> str:
    """Where the tracking server stores an experiment's artifacts (a folder on its disk, or a URI)."""
    return str(client(uri).get_experiment(experiment_id).artifact_location)


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
    """The MLflow runs of a sweep's trials (for `tracking`'s own modules; others use `queries`)."""
    c = client(uri)
    return list(c.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                              max_results=5000))


__all__ = ["DEFAULT_URI", "Outcome", "SweepRun", "SweepStatus", "TrialRow", "artifact_location", "client",
           "count_outcomes", "ensure_experiment", "flatten", "normalize_uri", "rank", "redact_uri", "tags"]
