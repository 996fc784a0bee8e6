"""The trial logger's outbox on real MLflow stores: params, images and artifacts reach the run through the
background queue (the training thread only reads bytes or copies files), and the spool folder under /tmp
is gone once everything is sent, or kept, with its path said, when a server outage leaves files unsent."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from PIL import Image

from catsith_sweep import tracking
from catsith_sweep.tracking import sweep_runs
from catsith_sweep.tracking.trial_logger import Outbox, TrialLogger, _Item


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new sqlite store keeps its artifacts in ./mlruns: keep them in the test's folder."""
    monkeypatch.chdir(tmp_path)


def test_everything_reaches_the_run_and_the_spool_folder_goes(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = tracking.ensure_experiment(uri, "logged")
    parent = sweep_runs.start_sweep_run(uri, exp_id, sweep_id="s", trainer="lora", metrics=["fid"], modes=["min"],
                                        inputs={}, params={})
    logger = TrialLogger(uri=uri, experiment_id=exp_id, parent_run_id=parent, trial_id="t1", trial_name="#1",
                         tags={}, params={"lora.rank": 4}, config={"train": {"max_steps": 8}})
    picture = tmp_path / "grid.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(picture)
    logger.log_image(picture, "samples", step=4)
    picture.unlink()  # queued as bytes: the trial may delete or overwrite its file at once
    export = tmp_path / "export"
    export.mkdir()
    (export / "weights.bin").write_bytes(b"\0" * 64)
    logger.log_artifacts({"weights": export / "weights.bin"}, "export")
    spool = logger.outbox.spool
    assert spool is not None and spool.is_dir() and spool.name.startswith("catsith_outbox_")
    logger.log_metrics({"fid": 3.0}, step=4)
    logger.flush()

    assert logger.outbox.spool is None and not spool.exists()
    run = tracking.client(uri).get_run(logger.run_id)
    assert run.data.params["lora.rank"] == "4" and run.data.params["config.train.max_steps"] == "8"
    assert run.data.metrics["fid"] == 3.0 and run.data.tags["catsith.attempts"] == "1"
    paths = {a.path for a in tracking.client(uri).list_artifacts(logger.run_id)}
    assert "images" in paths and "export" in paths
    again = TrialLogger(uri=uri, experiment_id=exp_id, parent_run_id=parent, trial_id="t1", trial_name="#1",
                        tags={}, params={"lora.rank": 4}, config={})
    again.flush()
    assert again.run_id == logger.run_id and again.attempt == 2
    assert tracking.client(uri).get_run(logger.run_id).data.tags["catsith.attempts"] == "2"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unsent_files_keep_the_spool_folder_and_say_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail at once: the outbox does the retrying
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    down = tracking.client(f"http://127.0.0.1:{_closed_port()}")  # a server that is down
    outbox = Outbox(retry_timeout_s=4.0)
    (tmp_path / "error.txt").write_text("out of memory\n")
    outbox.put(_Item(down, "run-1", "artifact", outbox.spool_copy(tmp_path / "error.txt")))
    spool = outbox.spool
    assert spool is not None

    with caplog.at_level(logging.WARNING, logger="catsith_sweep.tracking.trial_logger"):
        kept = outbox.close(timeout_s=0.5)
    assert kept == spool and (next(spool.glob("*/error.txt"))).read_text() == "out of memory\n"
    assert str(spool) in caplog.text and "1 item(s) could not be sent" in caplog.text

    assert outbox.flush(timeout_s=30.0) == 0  # the sender gives up after retry_timeout_s, counted
    assert outbox.dropped == 1 and not spool.exists()
