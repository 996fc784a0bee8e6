"""`python -m catsith_sweep ui`: the real MLflow UI, started as a user would (venv not activated, so
no `mlflow` on PATH), answering on 127.0.0.1 only, printing the direct URL of each experiment's runs page
(MLflow 3 otherwise opens an experiment on its GenAI overview), and stopped with Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def _listening_addresses(port: int) -> list[str]:
    """Local addresses (kernel hex) listening on `port`, from /proc/net/tcp and tcp6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


def test_ui_serves_the_store_on_localhost(tmp_path: Path) -> None:
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = mlflow.MlflowClient(tracking_uri=store).create_experiment("ui_check")
    port = _free_port()
    env = {**os.environ, "PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cli = subprocess.Popen([sys.executable, "-m", "catsith_sweep", "ui", "--tracking-uri", store,
                            "--port", str(port)], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert cli.poll() is None, cli.communicate()[0]
            try:
                assert _get(f"http://127.0.0.1:{port}/health").strip() == "OK"
                break
            except OSError:
                assert time.monotonic() < deadline, "the UI did not answer within 90 s"
                time.sleep(1)
        found = _get(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name"
                     "?experiment_name=ui_check")
        assert json.loads(found)["experiment"]["name"] == "ui_check"
        bound = _listening_addresses(port)
        assert bound and all(addr == "0100007F" for addr in bound), bound  # 127.0.0.1 only
    finally:
        cli.send_signal(signal.SIGINT)  # what Ctrl-C sends
        # the server stops its workers on Ctrl-C; on a loaded 2-core machine that took over 60 s twice
        output = cli.communicate(timeout=150)[0]
    assert cli.returncode == 0, output
    assert f"ui_check: http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs" in output, output
    with pytest.raises(OSError):
        _get(f"http://127.0.0.1:{port}/health")
