"""Subcommands of the sweep layer: run, leaderboard, ui."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from catsith_sweep.tracking import Outcome, TrialRow

out = Console(highlight=False, soft_wrap=True, emoji=False)
TOP_SHOWN = 3


def print_plan(loaded: Any, uri: str, address: str | None) -> None:
    """What a run would do: trials, budget, resources, where results go; checks the dataset and base."""
    from catsith_sweep.data.source import dataset_root
    from catsith_sweep.data.validate import validate_dataset
    from catsith_sweep.models.base_source import base_location, builtin_ready
    from catsith_sweep.tracking import redact_uri
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
        ("ray", address or "a local Ray instance"),
        ("tracking", f"{redact_uri(uri)}, experiment `{exp.mlflow_experiment}`"),
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
    if args.dry_run or args.plan:
        from catsith_sweep.plan.command import print_dry_run_prediction

        prediction = print_dry_run_prediction(loaded)  # calibrates with a few real steps in a temporary folder
        if prediction is not None:  # the sweep of this same config compares itself with it
            from catsith_sweep.plan.command import keep_prediction

            out.print(f"prediction kept for this config: {keep_prediction(loaded, prediction, Path(args.runs_dir))}")
    if args.dry_run:
        out.print("dry run: nothing started")
        return 0
    from catsith_sweep.sweep.driver import run_sweep

    outcome = run_sweep(loaded, address=args.address, tracking_uri=uri, resume=args.resume,
                        runs_root=Path(args.runs_dir), log=lambda m: out.print(escape(str(m))),
                        finish_in_background=True)
    try:  # the summary is printed while the plots are drawn and Ray shuts down
        return _print_outcome(args, loaded, uri, outcome)
    finally:
        outcome.wait_finished()


def _print_outcome(args: argparse.Namespace, loaded: Any, uri: str, outcome: Any) -> int:
    if outcome.interrupted:
        out.print(f"[yellow]sweep {outcome.sweep_dir.name} interrupted[/yellow]: finished trials are kept; "
                  f"continue it with: python -m catsith_sweep run {args.experiment} --resume")
        return 130
    counts = ", ".join(f"{v} {k}" for k, v in outcome.counts.items())
    out.print(f"sweep {outcome.sweep_dir.name} done: {counts}")
    if outcome.counts.get(Outcome.FAILED):
        out.print(f"[yellow]{outcome.counts[Outcome.FAILED]} trial(s) failed[/yellow]: see the leaderboard and "
                  "their MLflow runs (tag catsith.error, artifacts error.txt and traceback.txt)")
    if outcome.best and len(loaded.experiment.search.metrics()) > 1:  # a front, not a single best
        from catsith_sweep.sweep.multi import print_front

        print_front(_print_table, out.print, uri, outcome.parent_run_id, outcome.rows)
    elif outcome.best:
        from catsith_sweep.sweep.baseline import floor_of, verdict

        floor = floor_of(outcome.noise_floors, outcome.metric)
        _print_table(leaderboard_table(outcome.rows, outcome.metric, outcome.mode, top=TOP_SHOWN, noise_floor=floor,
                                       title=f"best trials by {outcome.metric} ({outcome.mode})"))
        value, before = outcome.best.value(outcome.metric), (outcome.baseline or {}).get(outcome.metric)
        if value is not None and before is not None:
            out.print(f"{outcome.metric}: {verdict(value, before, floor, outcome.mode)}")
    out.print(f"leaderboard: {outcome.sweep_dir / 'leaderboard.md'}; in the terminal: python -m catsith_sweep "
              f"leaderboard {loaded.experiment.mlflow_experiment}; browse: python -m catsith_sweep ui")
    return 0 if outcome.best else 1


def leaderboard_table(rows: list[TrialRow], metric: str, mode: str, *, title: str, top: int | None = None,
                      noise_floor: float | None = None) -> Table:
    """Trials as the leaderboard shows them: ranked ones first, then the others (all, or the `top` best);
    `tie` marks the best and the trials within `noise_floor` of it (`sweep.baseline.tie_marks`)."""
    from catsith_sweep.sweep.baseline import tie_marks, ties_note
    from catsith_sweep.sweep.summary import ordered

    marks = tie_marks(rows, metric, mode, noise_floor)
    table = Table(title=title, caption=ties_note(metric, noise_floor))
    for column in ("rank", "tie", "trial", "name", "outcome", metric):
        table.add_column(column, no_wrap=column != "name", overflow="fold")
    for column in ("params", "run id"):  # folded when narrow, never cut: a run id is copied into --run-id
        table.add_column(column, overflow="fold")
    shown = ordered(rows, metric, mode)
    for position, row in shown[:top] if top else shown:
        value = row.value(metric)
        table.add_row(str(position or "-"), marks.get(row.trial, ""), row.trial, escape(row.name), str(row.outcome),
                      f"{value:.5g}" if value is not None else "", escape(row.params_text("\n")), row.run_id)
    return table


def _print_table(table: Table) -> None:
    # A pipe or log file has no width to respect; rich would assume 80 columns and fold every cell.
    (out if out.is_terminal else Console(highlight=False, width=160)).print(table)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from catsith_sweep import tracking
    from catsith_sweep.tracking import queries

    uri = tracking.normalize_uri(args.tracking_uri or tracking.DEFAULT_URI)
    pick = queries.choose_sweep(uri, args.experiment_name, args.sweep_id)
    sweep = pick.sweep
    out.print(f"using {escape(pick.describe())}")
    rows = queries.trial_rows(uri, sweep)
    if len(sweep.metrics) > 1:  # the Pareto front first, then every trial (ranked by the first objective)
        from catsith_sweep.sweep.multi import print_front

        print_front(_print_table, out.print, uri, sweep.run_id, rows)
    from catsith_sweep.sweep.baseline import floor_of

    _print_table(leaderboard_table(rows, sweep.metric, sweep.mode,
                                   noise_floor=floor_of(queries.sweep_metrics(uri, sweep), sweep.metric),
                                   title=f"{args.experiment_name}: {sweep.name} ({sweep.metric}, {sweep.mode})"))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from catsith_sweep import tracking
    from catsith_sweep.tracking import queries

    uri = tracking.normalize_uri(args.tracking_uri or tracking.DEFAULT_URI)
    # This interpreter's mlflow, not whatever `mlflow` is on PATH (none, when .venv isn't activated).
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
               "--port", str(args.port)]
    base = f"http://{args.host}:{args.port}"
    out.print(f"MLflow UI on {base} (store {escape(tracking.redact_uri(uri))}); Ctrl-C stops it")
    # MLflow 3 opens an experiment on its GenAI overview: link straight to each experiment's runs page.
    for name, experiment_id in queries.experiments(uri):
        if args.experiment_name in (None, name):
            out.print(f"  {escape(name)}: {base}/#/experiments/{experiment_id}/runs")
    process = subprocess.Popen(command, start_new_session=True,
                               env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    # Ctrl-C and `kill` stop the server too, not just this wrapper; SIGINT even when this process was
    # started with it ignored (a shell's background job, a CI runner), as the stop the docs promise.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return process.wait()
    except KeyboardInterrupt:
        _stop_process_group(process)
        return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_process_group(process: subprocess.Popen, grace_seconds: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL what is left after `grace_seconds`. The server runs in
    its own session (Ctrl-C reaches this wrapper only), and its workers (uvicorn, MLflow's job runner and
    huey consumers) hold this terminal's output: one that outlived the server would keep a pipe reading
    our output open forever."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_seconds)
    with contextlib.suppress(ProcessLookupError):  # workers outliving the server, or a server that hung
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run an experiment's sweep (Ray Tune + Optuna, tracked in MLflow)")
    p.add_argument("experiment")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.add_argument("--address", default=None, help="join this Ray cluster (default: start a local one)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the experiment's, "
                   "else sqlite:///mlflow.db)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted sweep (fails if none)")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the plan; run nothing")
    p.add_argument("--plan", action="store_true", help="calibrate and predict the sweep first (as `plan` does, "
                   "up to 60 s), then run it; the parent run compares the prediction with what happened")
    p.add_argument("--runs-dir", default="runs", help="where sweeps keep their state (default: runs/)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("leaderboard", help="trials of an experiment's sweep, ranked (default: the newest "
                       "finished sweep)")
    p.add_argument("experiment_name")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--sweep-id", default=None, help="this sweep (default: the newest finished one; a newer "
                   "interrupted sweep is passed over and named)")
    p.set_defaults(func=cmd_leaderboard)
    p = sub.add_parser("ui", help="the MLflow UI for the tracking store, on 127.0.0.1")
    p.add_argument("experiment_name", nargs="?", default=None, help="print only this experiment's runs page")
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
