"""The sweep past one machine, with real processes: a multi-node Ray cluster on 127.0.0.1 with token auth,
an `mlflow server` over HTTP, the driver run as a user runs it, and faults injected while it runs.

Each fault test asserts on the MLflow store and on the Optuna study the searcher saved. Measured wall
times and what survives which fault: docker/README.md ("Cluster").
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cluster_support import (
    MlflowServer,
    RayCluster,
    child_runs,
    finish,
    optuna_trials,
    parent_runs,
    start_driver,
    token_env,
    wait_for,
    write_sweep,
)

pytestmark = [pytest.mark.cluster, pytest.mark.integration, pytest.mark.xdist_group("cluster"),
              pytest.mark.timeout(900)]

TAG_ATTEMPTS, TAG_NODE = "catsith.attempts", "catsith.node_id"


@pytest.fixture(scope="module")
def env(catsith_cache: Path) -> dict[str, str]:
    return token_env(catsith_cache)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(env: dict[str, str]) -> Any:
    cluster = RayCluster({"a": 1, "b": 1}, env)
    yield cluster
    cluster.close()


def _history(uri: str, run_id: str, key: str) -> list[Any]:
    import mlflow

    return list(mlflow.MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


def _listening(root: Any) -> set[tuple[str, str, int]]:
    import psutil

    found = set()
    for process in [root, *root.children(recursive=True)]:
        try:
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((process.name(), conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    return found


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, catsith_cache: Path) -> Any:
    """A local sweep (no --address) with one trial that fails the same way every time (max_failures 3),
    and every socket its process tree listens on while it runs."""
    import psutil

    cwd = tmp_path_factory.mktemp("local_sweep")
    write_sweep(cwd / "exp.yaml", name="local_sweep", base=tiny_base, steps=4, every=2, samples=2, max_failures=3,
                targets="[[to_q, to_v], [no_such_module]]", seed=0)  # seed 0 draws one of each
    env = {**token_env(catsith_cache), "RAY_AUTH_MODE": "disabled"}
    driver = start_driver(cwd, env, "exp.yaml")
    root = psutil.Process(driver.pid)
    sockets: set[tuple[str, str, int]] = set()
    while driver.poll() is None:
        sockets |= _listening(root)
        time.sleep(0.5)
    return cwd, finish(driver, cwd, 10), driver.returncode, sockets


def test_local_sweep_listens_on_loopback_only(local_sweep: Any) -> None:
    _, output, code, sockets = local_sweep
    assert code == 0, output[-3000:]
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), sockets
    exposed = sorted(s for s in sockets if not _is_loopback(s[1]))
    assert not exposed, f"listening beyond 127.0.0.1: {exposed}"


def test_trial_failing_every_time_fails_once(local_sweep: Any) -> None:
    cwd, output, code, _ = local_sweep
    assert code == 0 and "1 failed" in output, output[-3000:]
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    failed = [r for r in child_runs(uri, "local_sweep") if r.info.status == "FAILED"]
    assert len(failed) == 1 and "no_such_module" in failed[0].data.tags["catsith.error"]
    assert failed[0].data.tags[TAG_ATTEMPTS] == "1"  # max_failures is 3: not retried
    states = Counter(t.state.name for t in optuna_trials(cwd, "local_sweep"))
    assert states == {"COMPLETE": 1, "FAIL": 1}, states


def test_worker_node_killed_trial_resumes_elsewhere(tmp_path: Path, tiny_base: Path, env: dict[str, str],
                                                    server: MlflowServer, cluster: RayCluster) -> None:
    name, steps, every = "node_loss", 40, 8
    write_sweep(tmp_path / "exp.yaml", name=name, base=tiny_base, steps=steps, every=every, samples=1)
    driver = start_driver(tmp_path, env, "exp.yaml", "--address", cluster.address, "--tracking-uri", server.uri)

    def checkpointed_run() -> Any:
        runs = [r for r in child_runs(server.uri, name) if "sprite_fid" in r.data.metrics]
        has_checkpoint = list((tmp_path / "runs").rglob("checkpoint_*"))
        return runs[0] if runs and has_checkpoint and runs[0].data.tags.get(TAG_NODE) else None

    run = wait_for(checkpointed_run, 400, "a trial with a checkpointed evaluation")
    first_node = run.data.tags[TAG_NODE]
    victim = cluster.name_of(first_node)
    assert victim in ("a", "b"), (first_node, cluster.nodes)
    cluster.kill(victim)
    output = finish(driver, tmp_path, 600)
    cluster.add(victim)  # back to two workers for the next tests
    assert driver.returncode == 0 and "1 finished" in output, output[-3000:]

    (child,) = child_runs(server.uri, name)  # the retried trial reused its run
    assert child.info.status == "FINISHED" and child.data.tags[TAG_ATTEMPTS] == "2"
    assert child.data.tags[TAG_NODE] not in (first_node, "")
    losses = Counter(m.step for m in _history(server.uri, child.info.run_id, "loss"))
    assert set(losses) == set(range(1, steps + 1)), sorted(losses)
    # An evaluation step logs the loss once more (the last evaluation is the final report).
    redone = sorted(step for step, count in losses.items() if count > 1 + (step % every == 0))
    # Only the steps after the last checkpoint ran twice: never from scratch, at most one interval.
    assert not redone or (redone[0] > every and redone[-1] - redone[0] < every), redone
    evaluations = [m.step for m in _history(server.uri, child.info.run_id, "sprite_fid")]
    assert sorted(set(evaluations)) == list(range(every, steps + 1, every)), evaluations
    # Artifacts of a trial on a worker node reach the server's artifact store.
    weights = list(server.artifacts.rglob("pytorch_lora_weights.safetensors"))
    assert [w for w in weights if child.info.run_id in str(w)], weights
    (trial,) = optuna_trials(tmp_path, name)
    assert trial.state.name == "COMPLETE"


def test_tracking_outage_loses_nothing(tmp_path: Path, tiny_base: Path, env: dict[str, str],
                                       server: MlflowServer, cluster: RayCluster) -> None:
    name, steps, every, outage_s = "tracking_outage", 48, 16, 30
    write_sweep(tmp_path / "exp.yaml", name=name, base=tiny_base, steps=steps, every=every, samples=2)
    driver = start_driver(tmp_path, env, "exp.yaml", "--address", cluster.address, "--tracking-uri", server.uri)
    wait_for(lambda: any("loss" in r.data.metrics for r in child_runs(server.uri, name)), 400, "training")
    server.stop()
    at_stop = _stored(server)  # what the server had when it went down
    time.sleep(outage_s)
    assert driver.poll() is None, "the driver stopped during the outage"
    server.start()
    output = finish(driver, tmp_path, 600)
    assert driver.returncode == 0 and "2 finished" in output, output[-3000:]

    children = child_runs(server.uri, name)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    for child in children:
        history = _history(server.uri, child.info.run_id, "loss")
        # Each step once, none lost (an evaluation step logs the loss once more; the last evaluation is
        # the final report).
        expected = {step: 1 + (step % every == 0) for step in range(1, steps + 1)}
        assert Counter(m.step for m in history) == expected
        evaluations = sorted(m.step for m in _history(server.uri, child.info.run_id, "sprite_fid"))
        assert evaluations == [*range(every, steps + 1, every)]  # the last one is the final report
        images = {a.path for a in _client(server.uri).list_artifacts(child.info.run_id, "images")}
        assert len(images) >= 2 * (steps // every), images  # each image with its metadata file
        exported = {a.path for a in _client(server.uri).list_artifacts(child.info.run_id, "export")}
        assert "export/pytorch_lora_weights.safetensors" in exported
    delivered = {k: v - at_stop[k] for k, v in _stored(server).items()}
    print(f"stored when the server went down: {at_stop}; delivered after it came back: {delivered}")
    # Training went on during the outage: what it logged then arrived afterwards (and none was lost, above).
    assert delivered["metric values"] > 0 and delivered["artifact files"] > 0, delivered
    assert Counter(t.state.name for t in optuna_trials(tmp_path, name)) == {"COMPLETE": 2}


def _stored(server: MlflowServer) -> dict[str, int]:
    """What the server's stores hold: metric values (its sqlite file) and artifact files (its folder)."""
    import sqlite3

    with sqlite3.connect(server.root / "mlflow.db") as db:
        (metrics,) = db.execute("select count(*) from metrics").fetchone()
    files = sum(1 for p in server.artifacts.rglob("*") if p.is_file())
    return {"metric values": int(metrics), "artifact files": files}


def _client(uri: str) -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def test_driver_killed_then_resumed(tmp_path: Path, tiny_base: Path, env: dict[str, str], server: MlflowServer,
                                    cluster: RayCluster) -> None:
    name, samples = "driver_kill", 3
    write_sweep(tmp_path / "exp.yaml", name=name, base=tiny_base, steps=16, every=8, samples=samples)
    args = ("exp.yaml", "--address", cluster.address, "--tracking-uri", server.uri)
    driver = start_driver(tmp_path, env, *args)

    def one_finished_in_tune_state() -> bool:  # the finished trial recorded by Ray Tune, a second started
        states = "".join(p.read_text() for p in (tmp_path / "runs").rglob("experiment_state-*.json"))
        runs = child_runs(server.uri, name)
        return "TERMINATED" in states and len(runs) >= 2

    wait_for(one_finished_in_tune_state, 500, "a finished trial and a running one")
    finished_first = {r.info.run_id for r in child_runs(server.uri, name) if r.info.status == "FINISHED"}
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    resumed = start_driver(tmp_path, env, *args, "--resume")
    output = finish(resumed, tmp_path, 600)
    assert resumed.returncode == 0 and f"{samples} finished" in output, output[-3000:]

    children = child_runs(server.uri, name)
    trial_ids = [c.data.tags["catsith.trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == samples, trial_ids  # no duplicate, no orphan
    assert all(c.info.status == "FINISHED" for c in children)
    for child in children:
        if child.info.run_id in finished_first:
            assert child.data.tags[TAG_ATTEMPTS] == "1"  # a finished trial is not rerun
    (parent,) = parent_runs(server.uri, name)
    assert parent.info.status == "FINISHED"
    assert "driver" in parent.data.tags.get("catsith.resumed", ""), parent.data.tags
    assert Counter(t.state.name for t in optuna_trials(tmp_path, name)) == {"COMPLETE": samples}


def test_cluster_keeps_token_auth(env: dict[str, str], cluster: RayCluster) -> None:
    """A driver joins the cluster with its token, and cannot without it (the driver's own init_ray)."""
    join = ("import sys, ray; from catsith_sweep.sweep.driver import init_ray; init_ray(sys.argv[1], {}); "
            "print('nodes', len([n for n in ray.nodes() if n['Alive']]))")
    good = subprocess.run([sys.executable, "-c", join, cluster.address], env=env, capture_output=True, text=True,
                          timeout=120)
    assert good.returncode == 0 and "nodes 3" in good.stdout, good.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-c", join, cluster.address], env={**env, "RAY_AUTH_TOKEN": "0" * 64},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "nodes" not in bad.stdout
