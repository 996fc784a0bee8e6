"""Subcommands of the sweep layer: run, leaderboard, ui."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console(highlight=False, soft_wrap=True, emoji=False)


def print_plan(loaded: Any, uri: str, address: str | None) -> None:
    """What a run would do: trials, budget, resources, where results go; checks the dataset and base."""
    from catsith_sweep.data.source import dataset_root
    from catsith_sweep.data.validate import validate_dataset
    from catsith_sweep.models.base_source import base_location, builtin_ready
    from catsith_sweep.trainers import NEEDS_BASE, check_experiment, planned_budget
    from catsith_sweep.trainers.heldout import planned_split

    exp = loaded.experiment
    check_experiment(loaded)
    if exp.data.path is not None:
        report = str(validate_dataset(Path(exp.data.path)))
    else:
        report = f"builtin synthetic set (seed {exp.data.synth_seed}), at {dataset_root(exp.data, exp.model.cache_dir)}"
    base = "not used (trained from scratch)"
    if exp.trainer in NEEDS_BASE:
        location = base_location(exp.model.base, exp.model.cache_dir)
        ready = builtin_ready(exp.model.base, exp.model.cache_dir)
        base = f"{exp.model.base} -> {location}" + ("" if ready else " (not built yet: built first, ~10 min)")
    search = exp.search
    table = Table(title=f"plan: {exp.name}", show_header=False)
    rows = [
        ("trainer", exp.trainer), ("dataset", report), ("held-out split", planned_split(exp).describe()),
        ("base model", base),
        ("trials", f"{search.num_samples}, {search.max_concurrent_trials} at a time"),
        ("budget per trial", _budget(exp, planned_budget(exp))),
        ("search", f"{search.sampler} over {', '.join(loaded.space) or '(nothing)'}; "
                   f"{', '.join(f'{m} ({d})' for m, d in zip(search.metrics(), search.modes(), strict=True))}"),
        ("scheduler", search.scheduler), ("resources per trial", f"cpu {exp.resources.cpu}, gpu {exp.resources.gpu}"),
        ("ray", address or "a local Ray instance"), ("tracking", f"{uri}, experiment `{exp.mlflow_experiment}`"),
    ]
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    out.print(table)


def _budget(exp: Any, planned: tuple[int, int]) -> str:
    epochs = f" ({exp.train.epochs} epochs)" if exp.train.epochs else ""
    return f"{planned[0]} steps{epochs}, evaluation every {exp.eval.every_n_steps}: {planned[1]} evaluations"


def cmd_run(args: argparse.Namespace) -> int:
    from catsith_sweep.config import load_experiment

    loaded = load_experiment(args.experiment, args.overrides)
    uri = args.tracking_uri or loaded.experiment.tracking_uri
    print_plan(loaded, uri, args.address)
    if args.dry_run:
        from catsith_sweep.plan.command import print_dry_run_prediction

        print_dry_run_prediction(loaded)  # calibrates with a few real steps in a temporary folder
        out.print("dry run: nothing started")
        return 0
    from catsith_sweep.sweep.driver import run_sweep

    outcome = run_sweep(loaded, address=args.address, tracking_uri=uri, resume=args.resume,
                        runs_root=Path(args.runs_dir), log=lambda m: out.print(escape(str(m))))
    if outcome.interrupted:
        out.print(f"[yellow]sweep {outcome.sweep_dir.name} interrupted[/yellow]: finished trials are kept; "
                  f"continue it with: python -m catsith_sweep run {args.experiment} --resume")
        return 130
    counts = ", ".join(f"{v} {k}" for k, v in outcome.counts.items())
    out.print(f"sweep {outcome.sweep_dir.name} done: {counts}")
    if outcome.counts.get("failed"):
        out.print(f"[yellow]{outcome.counts['failed']} trial(s) failed[/yellow]: see the leaderboard and their "
                  "MLflow runs (tag catsith.error, artifact error.txt)")
    if outcome.best:
        shown = {k: v for k, v in outcome.best.items() if k != "params"}
        out.print(f"best trial {outcome.best['trial']}: {escape(str(shown))}")
        out.print(f"  params: {escape(str(outcome.best['params']))}")
        metric = loaded.experiment.search.metrics()[0]
        if outcome.baseline and metric in outcome.baseline:
            out.print(f"  {metric}: best {outcome.best[metric]:.4g} vs {outcome.baseline[metric]:.4g} before training")
    out.print(f"leaderboard: {outcome.sweep_dir / 'leaderboard.md'}; browse: python -m catsith_sweep ui")
    return 0 if outcome.best else 1


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from catsith_sweep import tracking
    from catsith_sweep.sweep.summary import latest_parent_run, rank, trial_rows

    uri = args.tracking_uri or tracking.DEFAULT_URI
    experiment_id, parent = latest_parent_run(uri, args.experiment_name)
    metrics = parent.data.tags.get("catsith.metric", "").split(",")
    modes = parent.data.tags.get("catsith.mode", "").split(",")
    rows = trial_rows(uri, experiment_id, parent.info.run_id, metrics)
    ranked = rank(rows, metrics[0], modes[0])
    table = Table(title=f"{args.experiment_name}: {parent.info.run_name} ({metrics[0]}, {modes[0]})")
    for column in ("rank", "trial", "outcome", metrics[0]):
        table.add_column(column, no_wrap=True)
    for column in ("params", "run id"):  # folded when narrow, never cut: a run id is copied into --run-id
        table.add_column(column, overflow="fold")
    for row in [*ranked, *[r for r in rows if r not in ranked]]:
        value = row.get(metrics[0])
        table.add_row(str(ranked.index(row) + 1) if row in ranked else "-", row["trial"], row["outcome"],
                      f"{value:.5g}" if isinstance(value, float) else "",
                      escape("\n".join(f"{k}={_short(v)}" for k, v in sorted(row["params"].items()))),
                      row["run_id"])
    # A pipe or log file has no width to respect; rich would assume 80 columns and fold every cell.
    (out if out.is_terminal else Console(highlight=False, width=160)).print(table)
    return 0


def _short(value: object) -> str:
    """A param as a person reads it: floats to 4 significant digits (MLflow stores params as text)."""
    try:
        number = float(str(value))
    except ValueError:
        return str(value)
    return str(value) if number.is_integer() and "." not in str(value) else f"{number:.4g}"


def cmd_ui(args: argparse.Namespace) -> int:
    from catsith_sweep import tracking

    uri = args.tracking_uri or tracking.DEFAULT_URI
    # This interpreter's mlflow, not whatever `mlflow` is on PATH (none, when .venv isn't activated).
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
               "--port", str(args.port)]
    out.print(f"MLflow UI on http://{args.host}:{args.port} (store {uri}); Ctrl-C stops it")
    process = subprocess.Popen(command, start_new_session=True,
                               env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        return process.wait()
    except KeyboardInterrupt:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
        return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run an experiment's sweep (Ray Tune + Optuna, tracked in MLflow)")
    p.add_argument("experiment")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.add_argument("--address", default=None, help="join this Ray cluster (default: start a local one)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the experiment's, "
                   "else sqlite:///mlflow.db)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep (fails if none)")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the plan; run nothing")
    p.add_argument("--runs-dir", default="runs", help="where sweeps keep their state (default: runs/)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("leaderboard", help="trials of an experiment's latest sweep, ranked")
    p.add_argument("experiment_name")
    p.add_argument("--tracking-uri", default=None)
    p.set_defaults(func=cmd_leaderboard)
    p = sub.add_parser("ui", help="the MLflow UI for the tracking store, on 127.0.0.1")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
