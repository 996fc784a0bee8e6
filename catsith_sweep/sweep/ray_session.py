"""The sweep's Ray instance: started in a thread while the driver does its own start-up, the trials'
environment, and shut down in a thread while the driver writes the summary.

Why a thread: `ray.init` of a local instance takes 5-10 s (starting the GCS, the raylet and its
prestarted workers), most of it waiting on those processes; the driver spends as long importing
MLflow, opening the store and the parent run and starting the baseline. `RaySession.start` runs both
at once; `wait` joins before the tuner is built. Shutting down (1-2 s) likewise overlaps the summary.

Why no job `runtime_env` on a local instance: the raylet prestarts one Python worker per CPU when it
starts, and Ray gives a trial actor one of them only when the job has no runtime environment of its
own (otherwise every trial actor waits for a fresh worker, 2-5 s on a small machine). The trials'
environment reaches them through the raylet's own environment instead, set while it starts. A
cluster (`address`) keeps `runtime_env`: its workers were started by other machines' raylets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from catsith_sweep.errors import UserInputError

RAY_TMP = "/tmp/catsith_ray"  # short: Ray's socket paths must stay under 107 characters
START_TIMEOUT_S = 300.0
"""How long `stop` waits for a start that is still running before it gives up on shutting it down."""


def trial_env() -> dict[str, str]:
    keys = ("CATSITH_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MLFLOW_DISABLE_TELEMETRY",
            "HF_HOME", "NO_ALBUMENTATIONS_UPDATE")
    env = {k: os.environ[k] for k in keys if k in os.environ}
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Trial output is interleaved in one terminal: keep library progress bars and chatter out of it.
    env.update({"HF_HUB_DISABLE_PROGRESS_BARS": "1", "DIFFUSERS_VERBOSITY": "error",
                "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore::FutureWarning,ignore::UserWarning"})
    return env


def _keep_local_ray_on_loopback() -> None:
    """Make the Ray node this process starts or joins use 127.0.0.1, so it listens there only.

    Ray 2.x binds its GCS, raylet, object manager and worker gRPC servers to the node's IP, and
    `ray.init(_node_ip_address="127.0.0.1")` replaces a loopback address with the machine's routable one.
    The one switch that makes Ray take the loopback address as the node IP is the one it uses on
    Windows/macOS, where multi-node clusters are off: set for this process (read by `ray.init`) and its
    children (the raylet passes it on to workers and the runtime-env agent)."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # ray is already imported: its constant is read at import


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """`env` set in this process's environment for the block (the processes it starts inherit it), the
    previous values back afterwards."""
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def init_ray(address: str | None, env: dict[str, str]) -> bool:
    """Start a local Ray instance on 127.0.0.1 (no `address`) or join the cluster at `address`; True
    when this call started or joined it (False: Ray was already initialized by the caller).

    A local instance is reachable from this machine only, so it runs without Ray's token
    authentication unless RAY_AUTH_MODE says otherwise; a cluster keeps Ray's default (token auth on,
    with the token from RAY_AUTH_TOKEN or ~/.ray/auth_token) unless the user sets RAY_AUTH_MODE=disabled.
    """
    import ray

    # Trials send evaluation results only; failed trials report no metric (see trainable.py).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None  # Ray's own variable names a cluster too
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "configure_logging": True,
                              "logging_level": "WARNING"}
    if address:
        if is_loopback_address(address):  # a cluster on this machine only: Ray would rewrite 127.0.0.1
            _keep_local_ray_on_loopback()
        ray.init(address=address, runtime_env={"env_vars": env}, **kwargs)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        _keep_local_ray_on_loopback()
        with _environ(env):  # the raylet and its prestarted workers inherit it (module docstring)
            ray.init(_temp_dir=RAY_TMP, **kwargs)
    return True


def is_loopback_address(address: str) -> bool:
    """`127.0.0.1:6379`, `localhost:6379`, `[::1]:6379` (optionally `ray://...`)."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


class _NoSigtermNotice(logging.Filter):
    """`ray.init` outside the main thread says it set no SIGTERM handler: the driver sets its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


class RaySession:
    """`init_ray` in a background thread (`start`), joined by `wait`; `stop` shuts down what it
    started (never a Ray instance the caller had already initialized).

    The thread lives until `stop`, and shuts Ray down itself: Ray starts its GCS and raylet with the
    kernel's parent-death signal, which fires when the *thread* that started them ends, so a thread
    that returned after `ray.init` would take the whole instance down with it."""

    def __init__(self, address: str | None, env: dict[str, str]) -> None:
        self.address, self.env = address, env
        self.owned = False
        """True when this session started (or joined) Ray, so it shuts it down."""
        self._error: BaseException | None = None
        self._ready, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="catsith-ray", daemon=True)

    @classmethod
    def start(cls, address: str | None, env: dict[str, str]) -> RaySession:
        session = cls(address, env)
        session._thread.start()
        return session

    def _run(self) -> None:
        logging.getLogger("ray._private.worker").addFilter(_NoSigtermNotice())
        try:
            self.owned = init_ray(self.address, self.env)
            import ray.tune  # noqa: F401  # the driver's next import: loaded while it is busy
        except BaseException as exc:  # noqa: BLE001 - raised in the driver's thread by wait()
            self._error = exc
            return
        finally:
            self._ready.set()
        self._stop.wait()
        if self.owned:
            import ray

            ray.shutdown()
            self.owned = False

    def wait(self) -> None:
        """Block until Ray is up; raise what starting it raised."""
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self, *, background: bool = False) -> None:
        """Shut down the Ray instance this session started, once its start is over; `background`: return
        at once (`join` waits for it)."""
        self._stop.set()
        if not background:
            self.join()

    def join(self) -> None:
        """Wait for `stop` to be done (at most `START_TIMEOUT_S` when a start still hangs)."""
        if self._stop.is_set():
            self._thread.join(START_TIMEOUT_S)


def check_tracking_reaches_workers(uri: str, address: str | None, experiment_id: str | None = None) -> None:
    """Trials on other nodes must reach the tracking store and its artifact store: a sqlite file on the
    driver, or a server that hands out a local artifact folder, would leave their data on their own disks."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    if not uri.startswith(("http://", "https://", "databricks")):
        raise UserInputError(
            f"tracking.uri is {uri!r}, a local store, but the Ray cluster at {address} has {len(nodes)} "
            "nodes: trials on other nodes cannot write to it. Start an MLflow server reachable from every "
            "node (`mlflow server --host 0.0.0.0 ...`) and pass --tracking-uri http://HOST:PORT")
    if experiment_id is None or not uri.startswith(("http://", "https://")):
        return
    from catsith_sweep import tracking

    location = tracking.artifact_location(uri, experiment_id)
    if location.startswith(("file:", "/")):
        raise UserInputError(
            f"the MLflow server at {uri} stores this experiment's artifacts at {location!r}, a folder each "
            f"trial would write on its own node ({len(nodes)} nodes here), so they would never reach the "
            "server. Start the server with `--artifacts-destination DIR_OR_BUCKET` (artifacts proxied over "
            "HTTP, `mlflow-artifacts:/`) or an object store (`--default-artifact-root s3://...`).")
