"""Real processes for the cluster tests: an `mlflow server` over HTTP (sqlite backend, artifacts proxied
by the server), a multi-node Ray cluster on 127.0.0.1 (tests/cluster_host.py) with Ray's token
authentication on, and the sweep driver started the way a user starts it (`python -m catsith_sweep run`)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

SWEEP = """\
# Cluster-test sweep: tiny base, one searched key, every evaluation a checkpoint.
name: {name}
trainer: lora
model: {{base: "{base}"}}
data: {{synth_variants: 1}}
train: {{max_steps: {steps}, batch_size: 4, learning_rate: 1.0e-3, num_threads: 1}}
eval: {{every_n_steps: {every}, num_metric_samples: 8, seeds: [0], num_inference_steps: 2, prompts: [a]}}
tracking: {{log_every_n_steps: 1}}
search:
  space:
    lora.rank: {{type: categorical, values: [2, 4]}}
    lora.target_modules: {{type: categorical, values: {targets}}}
  sampler: random
  seed: {seed}
  scheduler: none
  num_samples: {samples}
  max_concurrent_trials: 1
  max_failures: {max_failures}
"""


def write_sweep(path: Path, *, name: str, base: Path, steps: int, every: int, samples: int,
                max_failures: int = 2, targets: str = "[[to_q, to_v]]", seed: int = 0) -> Path:
    path.write_text(SWEEP.format(name=name, base=base, steps=steps, every=every, samples=samples,
                                 max_failures=max_failures, targets=targets, seed=seed))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Any, timeout: float, what: str, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a sqlite backend and an artifact store it serves over HTTP."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.artifacts = root / "artifacts"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                   f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination", str(self.artifacts),
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the server keeps it
        self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True,
                                        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
        wait_for(self.healthy, 120, f"mlflow server on {self.uri}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)
        self.process = None


class RayCluster:
    """A head (no CPUs: trials never run there) and named worker nodes, all on 127.0.0.1."""

    def __init__(self, workers: dict[str, int], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "cluster_host.py"), *[f"{n}:{c}" for n, c in workers.items()]],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
        first = self._answer()
        self.address: str = first["address"]
        self.nodes = {n["name"]: n for n in first["nodes"]}

    def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the Ray cluster host exited")
        return dict(json.loads(line))

    def _ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._answer()

    def add(self, name: str, num_cpus: int = 1) -> dict[str, Any]:
        self.nodes[name] = self._ask({"add": name, "num_cpus": num_cpus})
        return self.nodes[name]

    def kill(self, name: str) -> None:
        self._ask({"kill": name})
        self.nodes.pop(name)

    def name_of(self, node_id: str) -> str | None:
        return next((n for n, info in self.nodes.items() if info["node_id"] == node_id), None)

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def token_env(cache: Path) -> dict[str, str]:
    """Env of the cluster and its drivers: Ray's token authentication on, with a fresh token."""
    return {**os.environ, "CATSITH_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def start_driver(cwd: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    log = open(cwd / f"driver-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 - the process keeps it
    return subprocess.Popen([sys.executable, "-m", "catsith_sweep", "run", *args], cwd=cwd, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(process: subprocess.Popen[str], cwd: Path, timeout: float) -> str:
    """Wait for a driver; return its output (the newest driver log in `cwd`)."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    logs = sorted(cwd.glob("driver-*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1].read_text() if logs else ""


def child_runs(uri: str, experiment: str) -> list[Any]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("catsith.run_kind") == "trial"]


def parent_runs(uri: str, experiment: str) -> list[Any]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=1000) if found else []
    return [r for r in runs if r.data.tags.get("catsith.run_kind") == "sweep"]


def optuna_trials(cwd: Path, name: str) -> list[Any]:
    """The trials of the Optuna study the sweep's searcher saved with Ray Tune's experiment state."""
    from catsith_sweep.sweep.search import BudgetAwareOptunaSearch

    (sweep_dir,) = (cwd / "runs" / name).iterdir()
    searcher = BudgetAwareOptunaSearch()
    searcher.restore_from_dir(str(sweep_dir / "tune"))
    return list(searcher._ot_study.trials)
