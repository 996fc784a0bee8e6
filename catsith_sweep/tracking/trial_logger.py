"""Logging from inside a trial: metrics batched and asynchronous, images and artifacts as they come."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from catsith_sweep.tracking import (
    PARENT_TAG,
    TAG_ERROR,
    TAG_KIND,
    TAG_SWEEP,
    TAG_TRIAL,
    client,
    find_trial_run,
    flatten,
)

MAX_PARAM_LEN = 6000


class TrialLogger:
    """The child run of one trial. Re-opening the same (parent, trial id) reuses its run, so a retried
    or resumed trial never gets a second one."""

    def __init__(self, *, uri: str, experiment_id: str, parent_run_id: str, trial_id: str, trial_name: str,
                 tags: dict[str, str], params: dict[str, Any], config: dict[str, Any]) -> None:
        self.uri = uri
        self.client = client(uri)
        run_id = find_trial_run(uri, experiment_id, parent_run_id, trial_id)
        self.resumed = run_id is not None
        if run_id is None:
            run = self.client.create_run(experiment_id, run_name=trial_name, tags={
                PARENT_TAG: parent_run_id, TAG_TRIAL: trial_id, TAG_KIND: "trial", **tags})
            run_id = run.info.run_id
        self.run_id: str = run_id
        self.seconds = 0.0  # time spent in tracking calls, to keep it measurable
        if not self.resumed:
            self._log_params(params, config)

    def _log_params(self, params: dict[str, Any], config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        values = {**{f"config.{k}": v for k, v in flatten(config).items()}, **params}
        items = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in values.items()]
        items = [Param(p.key, p.value[:MAX_PARAM_LEN]) for p in items]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        started = time.perf_counter()
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch, synchronous=False)
        self.seconds += time.perf_counter() - started

    def log_image(self, path: Path, key: str, step: int) -> None:
        from PIL import Image

        started = time.perf_counter()
        with Image.open(path) as image:
            self.client.log_image(self.run_id, image.copy(), key=key, step=step)
        self.seconds += time.perf_counter() - started

    def log_artifacts(self, files: dict[str, Path], artifact_path: str) -> None:
        started = time.perf_counter()
        for path in files.values():
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), f"{artifact_path}/{path.name}")
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path)
        self.seconds += time.perf_counter() - started

    def log_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            self.client.log_artifact(self.run_id, str(path))

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value[:5000])

    def record_error(self, exc: BaseException) -> None:
        self.flush()
        self.set_tag(TAG_ERROR, f"{type(exc).__name__}: {exc}")
        self.log_text(f"{type(exc).__name__}: {exc}\n", "error.txt")

    def flush(self) -> None:
        import mlflow

        mlflow.flush_async_logging()


def trial_tags(sweep_id: str, git_commit: str, dataset_fingerprint: str) -> dict[str, str]:
    return {TAG_SWEEP: sweep_id, "catsith.git_commit": git_commit, "catsith.dataset": dataset_fingerprint}
