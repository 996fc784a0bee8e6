"""`run`: an experiment as a Ray Tune sweep with Optuna search, tracked in MLflow, resumable.

Layout on disk, per experiment: `runs/<name>/<sweep id>/` holds `sweep.json` (parent run id, status,
config fingerprint) and Ray's own experiment folder `tune/`. `run` on an experiment whose latest sweep
was interrupted continues that sweep (same config) with `Tuner.restore`; `--resume` insists on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catsith_sweep.config import LoadedExperiment, dump_resolved
from catsith_sweep.errors import UserInputError
from catsith_sweep.io import atomic_write_text

STATE_FILE = "sweep.json"
RAY_TMP = "/tmp/catsith_ray"  # short: Ray's socket paths must stay under 107 characters


@dataclass
class SweepOutcome:
    sweep_dir: Path
    parent_run_id: str
    best: dict[str, Any] | None
    counts: dict[str, int]
    interrupted: bool = False
    baseline: dict[str, float] | None = None


def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def config_fingerprint(loaded: LoadedExperiment) -> str:
    space = {k: v.model_dump() for k, v in sorted(loaded.space.items())}
    text = dump_resolved(loaded.experiment) + json.dumps(space, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_resumable(runs_dir: Path, fingerprint: str) -> Path | None:
    """The latest sweep folder of this experiment that did not finish, if its config is the same."""
    if not runs_dir.is_dir():
        return None
    for sweep_dir in sorted(runs_dir.iterdir(), reverse=True):
        state_path = sweep_dir / STATE_FILE
        if not state_path.is_file():
            continue
        state = json.loads(state_path.read_text())
        if state.get("status") == "finished":
            return None
        return sweep_dir if state.get("fingerprint") == fingerprint else None
    return None


def write_state(sweep_dir: Path, **state: Any) -> None:
    path = sweep_dir / STATE_FILE
    current = json.loads(path.read_text()) if path.is_file() else {}
    atomic_write_text(path, json.dumps({**current, **state}, indent=2))


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


def init_ray(address: str | None, env: dict[str, str]) -> None:
    """Start a local Ray instance on 127.0.0.1 (no `address`) or join the cluster at `address`.

    A local instance is reachable from this machine only, so it runs without Ray's token
    authentication unless RAY_AUTH_MODE says otherwise; a cluster keeps Ray's default (token auth on,
    with the token from RAY_AUTH_TOKEN or ~/.ray/auth_token) unless the user sets RAY_AUTH_MODE=disabled.
    """
    import ray

    # Trials send evaluation results only; failed trials report no metric (see trainable.py).
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None  # Ray's own variable names a cluster too
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "include_dashboard": False,
                              "log_to_driver": True, "configure_logging": True, "logging_level": "WARNING"}
    if address:
        if is_loopback_address(address):  # a cluster on this machine only: Ray would rewrite 127.0.0.1
            _keep_local_ray_on_loopback()
        ray.init(address=address, **kwargs)
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        _keep_local_ray_on_loopback()
        ray.init(_temp_dir=RAY_TMP, **kwargs)


def is_loopback_address(address: str) -> bool:
    """`127.0.0.1:6379`, `localhost:6379`, `[::1]:6379` (optionally `ray://...`)."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


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

    location = tracking.client(uri).get_experiment(experiment_id).artifact_location
    if location.startswith(("file:", "/")):
        raise UserInputError(
            f"the MLflow server at {uri} stores this experiment's artifacts at {location!r}, a folder each "
            f"trial would write on its own node ({len(nodes)} nodes here), so they would never reach the "
            "server. Start the server with `--artifacts-destination DIR_OR_BUCKET` (artifacts proxied over "
            "HTTP, `mlflow-artifacts:/`) or an object store (`--default-artifact-root s3://...`).")


def explain_resume(uri: str, parent_run_id: str, state: dict[str, Any], log: Any) -> None:
    """Say on the parent run (tag catsith.resumed) and in the output why the sweep is continued."""
    from catsith_sweep import tracking

    if state.get("status") == "interrupted":
        reason = "the previous driver was interrupted (Ctrl-C or a stop signal) and saved Ray Tune's state"
    else:
        reason = ("the previous driver stopped without recording it (killed, crashed, or its machine lost): "
                  "Ray Tune's last saved state is used; trials it had running restart from their last checkpoint")
    log(f"resuming because {reason}")
    c = tracking.client(uri)
    previous = c.get_run(parent_run_id).data.tags.get("catsith.resumed")
    note = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {reason}"
    c.set_tag(parent_run_id, "catsith.resumed", f"{previous}\n{note}"[-5000:] if previous else note)


def close_orphaned_trial_runs(uri: str, experiment_id: str, parent_run_id: str, trial_ids: set[Any]) -> None:
    """End child runs still RUNNING whose trial Ray Tune no longer knows: started just before a driver was
    lost, after Tune last saved its state, they would otherwise stay RUNNING forever."""
    from catsith_sweep import tracking

    c = tracking.client(uri)
    for run in tracking.child_runs(uri, experiment_id, parent_run_id):
        if run.info.status == "RUNNING" and run.data.tags.get(tracking.TAG_TRIAL) not in trial_ids:
            c.set_tag(run.info.run_id, tracking.TAG_ERROR, "lost with the driver before Ray Tune saved the trial; "
                      "its suggestion was run again under a new trial id")
            c.set_terminated(run.info.run_id, "KILLED")


def trial_env() -> dict[str, str]:
    keys = ("CATSITH_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MLFLOW_DISABLE_TELEMETRY",
            "HF_HOME", "NO_ALBUMENTATIONS_UPDATE")
    env = {k: os.environ[k] for k in keys if k in os.environ}
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Trial output is interleaved in one terminal: keep library progress bars and chatter out of it.
    env.update({"HF_HUB_DISABLE_PROGRESS_BARS": "1", "DIFFUSERS_VERBOSITY": "error",
                "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore::FutureWarning,ignore::UserWarning"})
    return env


def quiet_driver() -> None:
    """Keep Optuna's study notices out of the driver's terminal, which shows the plan, the table and
    the summary (the CLI already quiets transformers, diffusers and progress bars)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Every evaluation is a checkpoint, so Tune snapshots its state often; on a local storage path that
    # costs milliseconds, yet Tune warns about it every few seconds.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def budget_evaluations(loaded: LoadedExperiment) -> int:
    exp = loaded.experiment
    steps = exp.train.max_steps or 0
    return max(1, -(-steps // exp.eval.every_n_steps)) if steps else 10


def run_sweep(loaded: LoadedExperiment, *, address: str | None = None, tracking_uri: str | None = None,
              resume: bool = False, runs_root: Path = Path("runs"), log: Any = print) -> SweepOutcome:
    """Run (or continue) the sweep of `loaded`; returns where it lives and how it went."""
    from catsith_sweep import tracking
    from catsith_sweep.sweep.tuner import build_tuner, restore_tuner
    from catsith_sweep.trainers import prepare

    exp = loaded.experiment
    uri = tracking.normalize_uri(tracking_uri or exp.tracking_uri)
    runs_dir = (runs_root / exp.name).resolve()
    fingerprint = config_fingerprint(loaded)
    sweep_dir = find_resumable(runs_dir, fingerprint)
    if resume and sweep_dir is None:
        raise UserInputError(f"--resume: no interrupted sweep of `{exp.name}` with this same config in {runs_dir}")
    quiet_driver()
    dataset_dir = prepare(exp, log=log)
    from catsith_sweep.data.dataset import fingerprint as dataset_fingerprint

    experiment_id = tracking.ensure_experiment(uri, exp.mlflow_experiment)
    if sweep_dir is not None:
        state = json.loads((sweep_dir / STATE_FILE).read_text())
        parent_run_id = state["parent_run_id"]
        log(f"continuing interrupted sweep {sweep_dir.name} (MLflow parent run {parent_run_id})")
        explain_resume(uri, parent_run_id, state, log)
    else:
        sweep_dir = runs_dir / time.strftime("%Y%m%d-%H%M%S")
        sweep_dir.mkdir(parents=True, exist_ok=False)
        from catsith_sweep.sweep.summary import start_parent_run

        parent_run_id = start_parent_run(uri, experiment_id, loaded, sweep_dir.name)
        write_state(sweep_dir, parent_run_id=parent_run_id, status="running", fingerprint=fingerprint,
                    experiment=str(loaded.path), tracking_uri=uri, experiment_id=experiment_id)
        from catsith_sweep.sweep.summary import log_baseline

        log("evaluating the starting point (no training) as the baseline")
        baseline = log_baseline(uri, parent_run_id, loaded, sweep_dir / "baseline")
        write_state(sweep_dir, baseline={k: v for k, v in baseline.items() if isinstance(v, float)})
    init_ray(address, trial_env())
    check_tracking_reaches_workers(uri, address, experiment_id)
    from catsith_sweep.sweep.trainable import SweepContext

    context = SweepContext(
        experiment=exp.model_dump(mode="json"), fixed_params={}, tracking_uri=uri, experiment_id=experiment_id,
        parent_run_id=parent_run_id, sweep_id=sweep_dir.name, git_commit=git_commit(),
        dataset_fingerprint=dataset_fingerprint(dataset_dir), env=trial_env(),
    )
    tune_dir = sweep_dir / "tune"
    if tune_dir.is_dir() and (tune_dir / "tuner.pkl").is_file():
        tuner, outcomes = restore_tuner(loaded, context, tune_dir)
    else:
        tuner, outcomes = build_tuner(loaded, context, sweep_dir, budget_evaluations(loaded))
    results = tuner.fit()
    if results.num_terminated + results.num_errors < len(results) or len(results) < exp.search.num_samples:
        # Ctrl-C (or a lost driver) stops Ray, which saves its state: leave the sweep resumable.
        write_state(sweep_dir, status="interrupted")
        return SweepOutcome(sweep_dir, parent_run_id, None, {}, interrupted=True)
    close_orphaned_trial_runs(uri, experiment_id, parent_run_id, {r.metrics.get("trial_id") for r in results})
    from catsith_sweep.sweep.summary import finish_parent_run

    best, counts = finish_parent_run(uri, experiment_id, parent_run_id, loaded, results, outcomes, sweep_dir)
    write_state(sweep_dir, status="finished", best=best, counts=counts)
    baseline = json.loads((sweep_dir / STATE_FILE).read_text()).get("baseline", {})
    return SweepOutcome(sweep_dir, parent_run_id, best, counts, baseline=baseline)
