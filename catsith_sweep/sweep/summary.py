"""The sweep's parent MLflow run: its inputs at the start; at the end the leaderboard, the best trial,
Optuna's plots, and a visual comparison of the top trials against the ground truth and the base."""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

from catsith_sweep import tracking
from catsith_sweep.config import LoadedExperiment, dump_resolved
from catsith_sweep.io import atomic_write_text

TOP_K = 3


def start_parent_run(uri: str, experiment_id: str, loaded: LoadedExperiment, sweep_id: str) -> str:
    exp = loaded.experiment
    c = tracking.client(uri)
    run = c.create_run(experiment_id, run_name=f"sweep {sweep_id}", tags={
        tracking.TAG_KIND: "sweep", tracking.TAG_SWEEP: sweep_id, "catsith.trainer": exp.trainer,
        "catsith.metric": ",".join(exp.search.metrics()), "catsith.mode": ",".join(exp.search.modes()),
    })
    run_id = run.info.run_id
    c.log_artifact(run_id, str(loaded.path), "inputs")
    if loaded.space_file is not None:
        c.log_artifact(run_id, str(loaded.space_file), "inputs")
    with tempfile.TemporaryDirectory() as tmp:
        resolved = Path(tmp) / "resolved_config.yaml"
        resolved.write_text(dump_resolved(exp))
        c.log_artifact(run_id, str(resolved), "inputs")
    from mlflow.entities import Param

    search = exp.search
    params = {"sampler": search.sampler, "scheduler": search.scheduler, "num_samples": search.num_samples,
              "max_concurrent_trials": search.max_concurrent_trials, "space": json.dumps(
                  {k: v.model_dump(exclude_none=True) for k, v in loaded.space.items()})[:6000]}
    c.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run_id


def trial_rows(uri: str, experiment_id: str, parent_run_id: str, metrics: list[str]) -> list[dict[str, Any]]:
    """One row per trial run, with its outcome and final metric values."""
    rows = []
    for run in tracking.child_runs(uri, experiment_id, parent_run_id):
        tags = run.data.tags
        if tags.get(tracking.TAG_ERROR):
            outcome = "failed"
        elif tags.get(tracking.TAG_EARLY) == "true":
            outcome = "stopped early"
        elif tags.get(tracking.TAG_FINISHED) == "true":
            outcome = "finished"
        else:
            outcome = run.info.status.lower()
        rows.append({
            "trial": tags.get(tracking.TAG_TRIAL, ""), "run_id": run.info.run_id, "outcome": outcome,
            "status": run.info.status, "start_time": run.info.start_time,
            **{m: run.data.metrics.get(m) for m in metrics},
            "params": {k: v for k, v in run.data.params.items() if not k.startswith("config.")},
        })
    return rows


def ray_only_failures(results: Any, known: set[str]) -> list[dict[str, Any]]:
    """Trials that errored before they could open an MLflow run (they still count as failed)."""
    rows = []
    for result in results:
        match = re.search(r"trial_main_([0-9a-f]+)_", str(result.path))
        trial_id = (result.metrics or {}).get("trial_id") or (match.group(1) if match else str(result.path))
        if result.error is not None and trial_id not in known:
            rows.append({"trial": trial_id, "run_id": "", "outcome": "failed", "status": "FAILED",
                         "params": {k: str(v) for k, v in (result.config or {}).items()},
                         "error": str(result.error).strip().splitlines()[-1][:300]})
    return rows


def rank(rows: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Finished trials with a finite metric, best first (failed or stopped trials never rank)."""
    usable = [r for r in rows if r["outcome"] == "finished" and isinstance(r.get(metric), float)
              and math.isfinite(r[metric])]
    return sorted(usable, key=lambda r: r[metric], reverse=(mode == "max"))


def leaderboard_markdown(rows: list[dict[str, Any]], metric: str, mode: str) -> str:
    ranked = rank(rows, metric, mode)
    others = [r for r in rows if r not in ranked]
    lines = [f"| rank | trial | outcome | {metric} ({mode}) | params |", "|---|---|---|---|---|"]
    for i, row in enumerate([*ranked, *others]):
        value = row.get(metric)
        shown = f"{value:.5g}" if isinstance(value, float) else ""
        params = ", ".join(f"{k}={v}" for k, v in sorted(row["params"].items()))
        lines.append(f"| {i + 1 if row in ranked else '-'} | {row['trial']} | {row['outcome']} | {shown} | {params} |")
    return "\n".join(lines) + "\n"


def finish_parent_run(uri: str, experiment_id: str, parent_run_id: str, loaded: LoadedExperiment,
                      results: Any, outcomes: Any, sweep_dir: Path) -> tuple[dict[str, Any] | None, dict[str, int]]:
    exp = loaded.experiment
    metric, mode = exp.search.metrics()[0], exp.search.modes()[0]
    rows = trial_rows(uri, experiment_id, parent_run_id, exp.search.metrics())
    rows += ray_only_failures(results, {r["trial"] for r in rows})
    ranked = rank(rows, metric, mode)
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("finished", "stopped early", "failed")}
    c = tracking.client(uri)
    board = leaderboard_markdown(rows, metric, mode)
    atomic_write_text(sweep_dir / "leaderboard.md", board)
    c.log_artifact(parent_run_id, str(sweep_dir / "leaderboard.md"))
    c.log_table(parent_run_id, {"trial": [r["trial"] for r in rows], "outcome": [r["outcome"] for r in rows],
                                metric: [r.get(metric) for r in rows],
                                "params": [json.dumps(r["params"]) for r in rows]}, "leaderboard.json")
    best = None
    if ranked:
        top = ranked[0]
        best = {"trial": top["trial"], "run_id": top["run_id"], metric: top[metric], "params": top["params"]}
        c.set_tag(parent_run_id, "catsith.best_trial", top["trial"])
        c.set_tag(parent_run_id, "catsith.best_run_id", top["run_id"])
        c.log_metric(parent_run_id, f"best_{metric}", top[metric])
    for name, count in counts.items():
        c.log_metric(parent_run_id, f"trials_{name.replace(' ', '_')}", count)
    from catsith_sweep.sweep.plots import comparison_grid, optuna_plots, tradeoff_plots

    plot_dir = sweep_dir / "plots"
    pictures = (optuna_plots(loaded, rows, plot_dir, uri) + tradeoff_plots(loaded, rows, plot_dir, uri)
                + comparison_grid(uri, ranked[:TOP_K], plot_dir))
    for path in pictures:
        c.log_artifact(parent_run_id, str(path), "plots")
    c.set_terminated(parent_run_id, "FINISHED")
    return best, counts


def latest_parent_run(uri: str, experiment_name: str) -> tuple[str, Any]:
    """(experiment id, the most recent sweep's parent run) of an MLflow experiment."""
    from catsith_sweep.errors import UserInputError

    c = tracking.client(uri)
    found = c.get_experiment_by_name(experiment_name)
    if found is None:
        raise UserInputError(f"no MLflow experiment named `{experiment_name}` in {uri}")
    runs = c.search_runs([found.experiment_id], filter_string=f"tags.`{tracking.TAG_KIND}` = 'sweep'",
                         order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise UserInputError(f"experiment `{experiment_name}` in {uri} has no sweep yet")
    return str(found.experiment_id), runs[0]


def log_baseline(uri: str, parent_run_id: str, loaded: LoadedExperiment, workdir: Path) -> dict[str, float]:
    """Evaluate the experiment's starting point with no training (for LoRA: the untuned base, since
    a fresh adapter is a no-op) and log it on the parent run as `baseline_<metric>`, so the leaderboard
    says whether tuning helped at all."""
    from catsith_sweep.trainers import make_trainer

    trainer = make_trainer(loaded.experiment, workdir)
    trainer.setup()
    evaluation = trainer.evaluate(workdir / "baseline")
    c = tracking.client(uri)
    for key, value in evaluation.metrics.items():
        if isinstance(value, float) and math.isfinite(value):
            c.log_metric(parent_run_id, f"baseline_{key}", value, step=0)
    for key, path in evaluation.images.items():
        c.log_artifact(parent_run_id, str(path), f"baseline/{key}")
    return evaluation.metrics
