"""Logging from inside a trial, through an outbox that survives a tracking-server outage.

Every metric batch, param batch, image, artifact and tag goes into an in-order queue that one background
thread sends to MLflow; training never waits on the tracking server (the training thread only reads an
image's bytes or copies a file). A send that fails for a reason that can pass (server down or
restarting, network, 5xx) is retried with backoff, the same item first, so nothing is lost or
reordered; files are copied into a spool folder when queued, since the trial may overwrite or delete
its own copy before the server is back. `flush()` waits for the queue to drain (up to
`flush_timeout_s`), and the trial's last report waits on it, so a finished trial has all of its data
on the server.

The spool folder (`/tmp/catsith_outbox_*`) exists only while it holds files not yet sent: it is made
on the first file queued and removed once a flush finds it empty, and at the process's exit `close`
removes it, or keeps it and says where, with what could not be sent.
"""

from __future__ import annotations

import atexit
import io
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
TAG_ATTEMPTS = "catsith.attempts"
TAG_NODE = "catsith.node_id"
# MLflow error codes that no retry can fix (the request itself is wrong): such an item is dropped, counted.
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                    "BAD_REQUEST", "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED"}
METRICS_PER_BATCH = 1000  # MLflow's log_batch limit

log = logging.getLogger(__name__)


def is_permanent(exc: BaseException) -> bool:
    """True when retrying `exc` cannot help: MLflow rejected the request itself."""
    return getattr(exc, "error_code", None) in PERMANENT_ERRORS


def call_with_retry(fn: Callable[[], Any], what: str, timeout_s: float, first_wait_s: float = 1.0) -> Any:
    """`fn()`, retried with backoff (at most 15 s apart) while it fails for a reason that can pass."""
    deadline = time.monotonic() + timeout_s
    wait = first_wait_s
    while True:
        try:
            return fn()
        except Exception as exc:
            if is_permanent(exc) or time.monotonic() + wait > deadline:
                raise
            log.warning("tracking: %s failed (%s: %s); retrying in %.0f s", what, type(exc).__name__,
                        str(exc)[:200], wait)
            time.sleep(wait)
            wait = min(wait * 2, 15.0)


@dataclass
class _Item:
    client: Any
    run_id: str
    kind: str  # "metrics", "image", "artifact", "tag"
    payload: Any
    artifact_path: str | None = None


class Outbox:
    """An in-order send queue with one sender thread, shared by the trials a (reused) Ray actor runs one
    after the other; see the module docstring."""

    def __init__(self, *, retry_timeout_s: float) -> None:
        self.retry_timeout_s = retry_timeout_s
        self.queue: queue.Queue[_Item] = queue.Queue()
        self._spool: Path | None = None
        self._spool_lock = threading.Lock()
        self._closed = False
        self.sent = 0
        self.dropped = 0
        self.retried = 0  # items that needed more than one try: logged during an outage
        self._thread = threading.Thread(target=self._run, name="catsith-tracking-outbox", daemon=True)
        self._thread.start()

    @property
    def spool(self) -> Path | None:
        """The spool folder while it exists (see the module docstring)."""
        return self._spool

    def put(self, item: _Item) -> None:
        self.queue.put(item)

    def spool_copy(self, path: Path) -> Path:
        """A private copy of a file or folder, so the trial may change or delete its own once queued."""
        with self._spool_lock:  # the folder is made here and removed by `_drop_empty_spool`
            if self._spool is None:
                self._spool = Path(tempfile.mkdtemp(prefix="catsith_outbox_"))
            target = Path(tempfile.mkdtemp(dir=self._spool)) / path.name
        if path.is_dir():
            shutil.copytree(path, target)
        else:
            shutil.copy2(path, target)
        return target

    def _drop_empty_spool(self) -> None:
        with self._spool_lock:
            if self._spool is not None:
                try:
                    os.rmdir(self._spool)  # fails while it holds anything: kept then
                    self._spool = None
                except FileNotFoundError:
                    self._spool = None
                except OSError:
                    pass

    def flush(self, timeout_s: float) -> int:
        """Wait until everything queued so far was sent (or dropped); returns how many items are left.
        The spool folder goes once nothing is left in it."""
        deadline = time.monotonic() + timeout_s
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.queue.unfinished_tasks
        if not left:
            self._drop_empty_spool()
        return left

    def close(self, timeout_s: float = 30.0) -> Path | None:
        """At the process's exit: send what is queued (up to `timeout_s`), then remove the spool folder
        if empty; a folder still holding unsent files is kept and its path logged (and returned)."""
        if self._closed:
            return self._spool
        self._closed = True
        left = self.flush(timeout_s)
        spool = self._spool
        if spool is not None and spool.is_dir():
            files = sum(1 for p in spool.rglob("*") if p.is_file())
            log.warning("tracking: %d item(s) could not be sent to MLflow before exit; the %d file(s) among "
                        "them are kept in %s", left, files, spool)
            return spool
        if left:
            log.warning("tracking: %d item(s) could not be sent to MLflow before exit", left)
        return None

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            batch = [item]
            if item.kind == "metrics":  # coalesce queued metric batches: one request instead of many
                while (len(batch) < 50 and not self.queue.empty() and self.queue.queue[0].kind == "metrics"
                       and self.queue.queue[0].run_id == item.run_id):  # peek; only this thread takes items
                    batch.append(self.queue.get())
            try:
                self._send(batch)
            finally:
                for _ in batch:
                    self.queue.task_done()

    def _send(self, batch: list[_Item]) -> None:
        tries = 0

        def attempt() -> None:
            nonlocal tries
            tries += 1
            self._send_once(batch)

        try:
            call_with_retry(attempt, f"logging {batch[0].kind} to run {batch[0].run_id}", self.retry_timeout_s)
            self.sent += len(batch)
            self.retried += len(batch) if tries > 1 else 0
        except Exception as exc:
            self.dropped += len(batch)
            log.error("tracking: gave up on %d %s item(s) for run %s: %s", len(batch), batch[0].kind,
                      batch[0].run_id, exc)
        finally:
            for item in batch:
                if item.kind == "artifact":
                    shutil.rmtree(item.payload.parent, ignore_errors=True)

    def _send_once(self, batch: list[_Item]) -> None:
        item = batch[0]
        c, run_id = item.client, item.run_id
        if item.kind == "metrics":
            metrics = [m for i in batch for m in i.payload]
            for start in range(0, len(metrics), METRICS_PER_BATCH):
                c.log_batch(run_id, metrics=metrics[start:start + METRICS_PER_BATCH])
        elif item.kind == "params":
            c.log_batch(run_id, params=item.payload)
        elif item.kind == "image":
            from PIL import Image

            data, key, step = item.payload
            with Image.open(io.BytesIO(data)) as image:
                c.log_image(run_id, image, key=key, step=step)
        elif item.kind == "artifact":
            path: Path = item.payload
            if path.is_dir():
                c.log_artifacts(run_id, str(path), item.artifact_path)
            else:
                c.log_artifact(run_id, str(path), item.artifact_path)
        elif item.kind == "tag":
            c.set_tag(run_id, *item.payload)


_outbox: Outbox | None = None
_outbox_lock = threading.Lock()


def process_outbox(retry_timeout_s: float) -> Outbox:
    """This process's outbox (started on first use)."""
    global _outbox
    with _outbox_lock:
        if _outbox is None:
            _outbox = Outbox(retry_timeout_s=retry_timeout_s)
            atexit.register(_outbox.close)
        _outbox.retry_timeout_s = retry_timeout_s
        return _outbox


class TrialLogger:
    """The child run of one trial. Re-opening the same (parent, trial id) reuses its run, so a retried
    or resumed trial never gets a second one; each opening counts as one attempt (tag catsith.attempts)
    and records the Ray node it runs on (tag catsith.node_id)."""

    def __init__(self, *, uri: str, experiment_id: str, parent_run_id: str, trial_id: str, trial_name: str,
                 tags: dict[str, str], params: dict[str, Any], config: dict[str, Any],
                 node_id: str | None = None, retry_timeout_s: float = 600.0) -> None:
        self.uri = uri
        self.client = client(uri)
        self.retry_timeout_s = retry_timeout_s
        self.outbox = process_outbox(retry_timeout_s)
        self.seconds = 0.0  # time the trial spent in tracking calls, to keep it measurable
        # Only finding or creating the run waits on the server (its id is needed); the rest is queued.
        run_id = self._retry(lambda: find_trial_run(uri, experiment_id, parent_run_id, trial_id), "finding the run")
        self.resumed = run_id is not None
        if run_id is None:
            run = self._retry(lambda: self.client.create_run(experiment_id, run_name=trial_name, tags={
                PARENT_TAG: parent_run_id, TAG_TRIAL: trial_id, TAG_KIND: "trial", TAG_ATTEMPTS: "1", **tags}),
                "creating the run")
            run_id, self.attempt = run.info.run_id, 1
        else:
            run = self._retry(lambda: self.client.get_run(run_id), "reading the run")
            self.attempt = int(run.data.tags.get(TAG_ATTEMPTS, "1")) + 1
        self.run_id: str = run_id
        if self.resumed:
            self.set_tag(TAG_ATTEMPTS, str(self.attempt))
        else:
            self.log_params(params, config)
        if node_id:  # the node this attempt runs on (a retried trial may land on another)
            self.set_tag(TAG_NODE, node_id)

    def _retry(self, fn: Callable[[], Any], what: str) -> Any:
        return call_with_retry(fn, what, self.retry_timeout_s)

    def log_params(self, params: dict[str, Any], config: dict[str, Any] | None = None) -> None:
        """`params` as given and the flattened `config` as `config.*` params, queued in batches."""
        from mlflow.entities import Param

        started = time.perf_counter()
        values = {**{f"config.{k}": v for k, v in flatten(config or {}).items()}, **params}
        items = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in values.items()]
        items = [Param(p.key, p.value[:MAX_PARAM_LEN]) for p in items]
        for start in range(0, len(items), 100):
            self._put("params", items[start:start + 100])
        self.seconds += time.perf_counter() - started

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        started = time.perf_counter()
        now = int(time.time() * 1000)
        self._put("metrics", [Metric(k, float(v), now, step) for k, v in metrics.items()])
        self.seconds += time.perf_counter() - started

    def log_image(self, path: Path, key: str, step: int) -> None:
        """Queue the image file's bytes (the trial may overwrite the file); the sender decodes them."""
        started = time.perf_counter()
        self._put("image", (path.read_bytes(), key, step))
        self.seconds += time.perf_counter() - started

    def log_artifacts(self, files: dict[str, Path], artifact_path: str) -> None:
        started = time.perf_counter()
        for path in files.values():
            self._put("artifact", self.outbox.spool_copy(path),
                      f"{artifact_path}/{path.name}" if path.is_dir() else artifact_path)
        self.seconds += time.perf_counter() - started

    def log_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            self._put("artifact", self.outbox.spool_copy(path), None)

    def set_tag(self, key: str, value: str) -> None:
        self._put("tag", (key, value[:5000]))

    def _put(self, kind: str, payload: Any, artifact_path: str | None = None) -> None:
        self.outbox.put(_Item(self.client, self.run_id, kind, payload, artifact_path))

    def record_error(self, exc: BaseException) -> None:
        self.set_tag(TAG_ERROR, f"{type(exc).__name__}: {exc}")
        self.log_text(f"{type(exc).__name__}: {exc}\n", "error.txt")
        self.flush()

    def flush(self) -> None:
        """Wait until the tracking server has everything logged so far (it may be restarting)."""
        left = self.outbox.flush(self.retry_timeout_s)
        if left or self.outbox.dropped:
            log.error("tracking: %d item(s) lost and %d still unsent after %.0f s (run %s)",
                      self.outbox.dropped, left, self.retry_timeout_s, self.run_id)


def trial_tags(sweep_id: str, git_commit: str, dataset_fingerprint: str) -> dict[str, str]:
    return {TAG_SWEEP: sweep_id, "catsith.git_commit": git_commit, "catsith.dataset": dataset_fingerprint}
