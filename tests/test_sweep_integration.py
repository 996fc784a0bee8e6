"""The real CLI, end to end: a small LoRA sweep on Ray Tune + Optuna, tracked in a real MLflow store,
with one trial that fails, then `leaderboard` and `promote` on the store that sweep wrote (the contract
between a sweep and promote); and an interrupted sweep, its runs ended as KILLED, resumed without
duplicate runs."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ray"), pytest.mark.timeout(900)]

EXPERIMENT = """\
# Integration-test sweep: tiny base, two quick trials and one that cannot find its target modules.
#   python -m catsith_sweep run exp.yaml
name: it_sweep
trainer: lora
model: {{base: "{base}"}}
data: {{synth_variants: 1}}
train: {{max_steps: {steps}, batch_size: 4, learning_rate: 1.0e-3, num_threads: 1}}
eval: {{every_n_steps: {every}, num_metric_samples: 8, seeds: [0], num_inference_steps: 4, prompts: [a, b]}}
search:
  space:
    lora.target_modules: {{type: categorical, values: [[to_q, to_v], [no_such_module]]}}
    lora.rank: {{type: categorical, values: [2, 4]}}
  sampler: random
  seed: 4
  scheduler: none
  num_samples: 3
  max_concurrent_trials: {concurrency}
  plots:
    - {{x: lora.rank, y: [sprite_fid]}}
export: {{formats: [peft_safetensors, catsith_json]}}
"""


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "CATSITH_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
            "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


def _cli(cwd: Path, cache: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "catsith_sweep", *args], cwd=cwd, env=_env(cache),
                          capture_output=True, text=True, timeout=timeout)


def _runs(db: Path) -> list[dict[str, str]]:
    with sqlite3.connect(db) as con:
        rows = con.execute("select run_uuid, status, name from runs").fetchall()
        tags = con.execute("select run_uuid, key, value from tags").fetchall()
    out = {r[0]: {"run_id": r[0], "status": r[1], "name": r[2]} for r in rows}
    for run_id, key, value in tags:
        out[run_id][key] = value
    return list(out.values())


@pytest.fixture()
def workspace(tmp_path: Path, tiny_base: Path, catsith_cache: Path) -> tuple[Path, Path]:
    """A working directory (the MLflow store and runs/ land there) and the session's model cache."""
    return tmp_path, catsith_cache


def test_sweep_end_to_end(workspace: tuple[Path, Path], tiny_base: Path) -> None:
    cwd, cache = workspace
    (cwd / "exp.yaml").write_text(EXPERIMENT.format(base=tiny_base, steps=8, every=4, concurrency=2))
    proc = _cli(cwd, cache, "run", "exp.yaml")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 finished, 1 failed" in proc.stdout
    assert "best trials by sprite_fid" in proc.stdout and "{'" not in proc.stdout  # rows, not raw dicts

    runs = _runs(cwd / "mlflow.db")
    parents = [r for r in runs if r.get("catsith.run_kind") == "sweep"]
    children = [r for r in runs if r.get("catsith.run_kind") == "trial"]
    assert len(parents) == 1 and len(children) == 3
    assert all(c["mlflow.parentRunId"] == parents[0]["run_id"] for c in children)
    failed = [c for c in children if c["status"] == "FAILED"]
    assert len(failed) == 1 and "no_such_module" in failed[0]["catsith.error"]
    assert sorted(c["status"] for c in children) == ["FAILED", "FINISHED", "FINISHED"]
    # Named for a person (Tune's counter and the sampled values); the trial id stays in a tag.
    assert all(c["name"].startswith("#") and " rank=" in c["name"] for c in children), [c["name"] for c in children]
    assert all(c["catsith.trial_id"] not in c["name"] for c in children)
    assert "no_such_module" in failed[0]["name"]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    good = next(c for c in children if c["status"] == "FINISHED")
    run = client.get_run(good["run_id"])
    assert {"lora.rank", "lora.target_modules", "config.train.max_steps"} <= set(run.data.params)
    assert {"sprite_fid", "loss", "kind_accuracy"} <= set(run.data.metrics)
    steps = [m.step for m in client.get_metric_history(good["run_id"], "sprite_fid")]
    assert steps == [4, 8]  # two evaluations, the last one sent as the final report
    artifacts = {a.path for a in client.list_artifacts(good["run_id"], "export")}
    assert {"export/pytorch_lora_weights.safetensors", "export/it_sweep.lora.json", "export/config.yaml"} <= artifacts
    assert any(a.path.startswith("images") for a in client.list_artifacts(good["run_id"]))
    parent_artifacts = {a.path for a in client.list_artifacts(parents[0]["run_id"])}
    assert {"leaderboard.md", "inputs", "plots"} <= parent_artifacts
    plots = {a.path for a in client.list_artifacts(parents[0]["run_id"], "plots")}
    assert {"plots/optimization_history.png", "plots/tradeoff_lora_rank.png",
            "plots/top_trials_comparison.png"} <= plots, plots
    assert parents[0]["status"] == "FINISHED" and parents[0].get("catsith.best_run_id")
    trace = mlflow.artifacts.download_artifacts(run_id=failed[0]["run_id"], artifact_path="traceback.txt",
                                                dst_path=str(cwd / "trace"), tracking_uri=client.tracking_uri)
    text = Path(trace).read_text()
    assert text.startswith("Traceback (most recent call last)") and "no_such_module" in text

    board = _cli(cwd, cache, "leaderboard", "it_sweep")
    assert board.returncode == 0 and "failed" in board.stdout and "finished" in board.stdout
    sweep_id = parents[0]["catsith.sweep_id"]
    assert f"using sweep {sweep_id} (finished, the newest finished sweep)" in board.stdout
    assert parents[0]["catsith.best_run_id"] in board.stdout  # whole, so it can be pasted into --run-id

    # promote reads what the sweep wrote: its tags, rows, ranking and export artifacts.
    registry = cwd / "loras"
    promoted = _cli(cwd, cache, "promote", "it_sweep", "--registry", str(registry))
    assert promoted.returncode == 0, promoted.stdout[-3000:] + promoted.stderr[-3000:]
    assert f"using sweep {sweep_id} (finished" in promoted.stdout
    assert "not promoted, failed" not in promoted.stdout  # a failed trial has no score to beat the best
    registry_client = mlflow.MlflowClient(tracking_uri=client.tracking_uri, registry_uri=client.tracking_uri)
    champion = registry_client.get_model_version_by_alias("it_sweep", "champion")
    assert champion.run_id == parents[0]["catsith.best_run_id"]
    assert champion.tags["catsith.sweep_id"] == sweep_id
    from catsith_sweep.registry import verify_registry

    [(package, findings)] = verify_registry(registry).items()
    assert [f for f in findings if f.is_error] == []
    assert champion.tags["catsith.package_path"] == str(package.resolve())


def test_interrupted_sweep_resumes_without_duplicates(workspace: tuple[Path, Path], tiny_base: Path) -> None:
    cwd, cache = workspace
    (cwd / "exp.yaml").write_text(EXPERIMENT.format(base=tiny_base, steps=40, every=8, concurrency=1))
    proc = subprocess.Popen([sys.executable, "-m", "catsith_sweep", "run", "exp.yaml"], cwd=cwd, env=_env(cache),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:  # wait until a first trial has a checkpointed evaluation
        if (cwd / "mlflow.db").exists() and list((cwd / "runs").rglob("checkpoint_*")):
            break
        time.sleep(2)
    else:
        proc.kill()
        pytest.fail("the sweep never reached a checkpoint:\n" + (proc.communicate()[0] or "")[-3000:])
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output[-3000:]
    assert "--resume" in output
    runs = _runs(cwd / "mlflow.db")
    assert [r["status"] for r in runs if r.get("catsith.run_kind") == "sweep"] == ["KILLED"]
    assert "RUNNING" not in {r["status"] for r in runs}, runs  # open trials were ended with the sweep

    resumed = _cli(cwd, cache, "run", "exp.yaml", "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "continuing interrupted sweep" in resumed.stdout and "unpickled" in resumed.stdout
    runs = _runs(cwd / "mlflow.db")
    children = [r for r in runs if r.get("catsith.run_kind") == "trial"]
    parents = [r for r in runs if r.get("catsith.run_kind") == "sweep"]
    assert len(parents) == 1 and parents[0]["status"] == "FINISHED"
    trial_ids = [c["catsith.trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 3, trial_ids
    assert sorted(c["status"] for c in children) == ["FAILED", "FINISHED", "FINISHED"]
