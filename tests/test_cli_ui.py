"""`python -m catsith_sweep ui`: the real MLflow UI, started as a user would (venv not activated, so
no `mlflow` on PATH), answering on 127.0.0.1 only, printing the direct URL of each experiment's runs page
(MLflow 3 otherwise opens an experiment on its GenAI overview), and stopped with Ctrl-C or `kill`, server
workers included, even when started with SIGINT ignored (a shell's background job, a CI runner)."""

from __future__ import annotations

import contextlib
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


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (the server's store path names its whole tree)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:  # ended while we looked
            continue
    return pids


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("stop,inherited_sigint_ignored", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["ctrl-c-in-a-background-job", "kill"])
def test_ui_serves_the_store_on_localhost(tmp_path: Path, stop: signal.Signals,
                                          inherited_sigint_ignored: bool) -> None:
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = mlflow.MlflowClient(tracking_uri=store).create_experiment("ui_check")
    port = _free_port()
    env = {**os.environ, "PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cli = subprocess.Popen([sys.executable, "-m", "catsith_sweep", "ui", "--tracking-uri", store,
                            "--port", str(port)], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           preexec_fn=_ignore_sigint if inherited_sigint_ignored else None)
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
        cli.send_signal(stop)  # SIGINT: what Ctrl-C sends
        try:  # SIGTERM to the server's group, then SIGKILL after 10 s: well inside this wait
            output = cli.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:  # fail without leaving a server behind
            for pid in _processes_mentioning(str(tmp_path / "mlflow.db")):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            raise
    assert cli.returncode == 0, output
    assert _processes_mentioning(str(tmp_path / "mlflow.db")) == []
    assert f"ui_check: http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs" in output, output
    with pytest.raises(OSError):
        _get(f"http://127.0.0.1:{port}/health")
