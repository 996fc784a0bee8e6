"""`plan`: calibrate on this machine, predict the sweep's time, compute and cost; print it as tables.
`run --dry-run` prints the same block through `print_plan_block`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from catsith_sweep.errors import UserInputError
from catsith_sweep.plan.calibrate import (
    MIN_TIMED_STEPS,
    STEP_ROUNDS,
    STEPS_PER_ROUND,
    Calibration,
    calibrate,
    step_spread,
    variant_factor,
)
from catsith_sweep.plan.costs import estimate_training_cost, gpus_rented, hardware_costs, load_prices
from catsith_sweep.plan.predict import Measured, Prediction, SweepShape, fmt_duration, predict

out = Console(highlight=False, soft_wrap=True)


def sweep_shape(exp: Any, *, baseline_cached: bool = False) -> SweepShape:
    search, res = exp.search, exp.resources
    return SweepShape(
        num_trials=search.num_samples, every_n_steps=exp.eval.every_n_steps, scheduler=search.scheduler,
        grace_period=search.grace_period, reduction_factor=search.reduction_factor,
        max_concurrent=search.max_concurrent_trials, cpu_per_trial=res.cpu, gpu_per_trial=res.gpu,
        threads_per_trial=exp.train.num_threads or max(1, int(res.cpu)),
        machine_cpus=float(os.cpu_count() or 1), machine_gpus=float(_gpu_count()),
        baseline_evaluations=exp.eval.noise_seeds, baseline_cached=baseline_cached,
    )


def baseline_is_cached(exp: Any) -> bool:
    """Whether the sweep will find its baseline cached (after `prepare`: the key needs the dataset)."""
    from catsith_sweep.data.source import dataset_root
    from catsith_sweep.trainers.baseline_key import baseline_cached

    return baseline_cached(exp, dataset_root(exp.data, exp.model.cache_dir))


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def measured(cal: Calibration) -> Measured:
    return Measured(total_steps=cal.total_steps, setup_s=cal.setup_s, step_s=cal.step_s, eval_s=cal.eval_s,
                    save_s=cal.save_s, export_s=cal.export_s, imports_s=cal.imports_s, step_spread=step_spread(cal))


def plan_experiment(loaded: Any, *, log: Any = print) -> tuple[Calibration, Prediction]:
    """Calibrate `loaded`'s experiment and predict its sweep."""
    exp = loaded.experiment
    shape = sweep_shape(exp)
    cal = calibrate(exp, source=loaded.path, estimate=lambda c: predict(measured(c), shape).wall_s,
                    space=loaded.space, log=log)
    shape = sweep_shape(exp, baseline_cached=baseline_is_cached(exp))  # the dataset is prepared now
    return cal, predict(measured(cal), shape)


def print_plan_block(loaded: Any, *, gpus: list[str] | None = None, prices_path: Path | None = None,
                     console: Console = out) -> tuple[Calibration, Prediction]:
    prices = load_prices(prices_path)  # bad price files fail before any calibration
    console.print("calibrating: a few real training steps and evaluations on this machine ...")
    cal, pred = plan_experiment(loaded, log=lambda m: console.print(escape(str(m))))
    exp = loaded.experiment
    console.print(_measured_table(cal))
    console.print(_prediction_table(exp, cal, pred))
    fixed_independent = (pred.fixed_before_s["driver imports"] + pred.fixed_before_s["ray.init"]
                         + pred.fixed_before_s["first-actor imports"] + sum(pred.fixed_after_s.values()))
    rented = gpus_rented(pred.slots, exp.resources.gpu)
    rows = hardware_costs(prices, device_name=cal.device,
                          fixed_seconds=fixed_independent, scaled_wall_seconds=pred.wall_s - fixed_independent,
                          scaled_busy_seconds=pred.busy_s, gpus=rented, kinds=gpus)
    table = Table(title=f"cost on other hardware ({rented} GPU(s) rented for the wall time)")
    for column in ("GPU", "provider", "speed vs here", "wall", "GPU-hours", "cost"):
        table.add_column(column, justify="right" if column not in ("GPU", "provider") else "left")
    for row in rows:
        mark = " (guess)" if row.guess else ""
        cost = f"${row.usd:.2f}" + (f"-{row.usd_max:.2f}" if row.usd_max else "")
        table.add_row(row.kind, row.provider, f"x{row.speed_ratio:.2f}{mark}", fmt_duration(row.wall_hours * 3600),
                      f"{row.gpu_hours:.3f}", cost + mark)
    console.print(table)
    for source in dict.fromkeys(r.speed_source for r in rows):
        console.print(f"  speed: {escape(source)}")
    console.print("assumptions:")
    for line in [*pred.assumptions, *cal.notes]:
        console.print(f"  - {escape(line)}")
    return cal, pred


def _step_method(cal: Calibration) -> str:
    spread = f"{STEP_ROUNDS} rounds of {STEPS_PER_ROUND} single steps spread over the calibration"
    if cal.steps_timed > MIN_TIMED_STEPS:
        spread += f", then {cal.steps_timed - MIN_TIMED_STEPS} in one batch"
    text = f"mean of {cal.steps_timed} steps: {spread}; rounds moved {step_spread(cal):.0%}"
    if cal.variants:
        text += f"; x{variant_factor(cal):.2f} for the searched values (see the assumptions)"
    return text


def _measured_table(cal: Calibration) -> Table:
    table = Table(title=f"measured on {cal.device} (calibration {cal.calibration_s:.1f} s, cap {cal.cap_s:.1f} s)",
                  show_header=False)
    rows = [
        ("s/step", f"{cal.step_s:.4f} ({_step_method(cal)}; after a warm-up step)"),
        ("s/eval", f"{cal.eval_s:.2f} ({cal.eval_method})"),
        ("first evaluation", f"{cal.first_eval_s:.2f} s (warm-up; {cal.cache_work_s:.1f} s of it one-time cache "
                             "work such as the dataset's sprite feature net, not counted in the calibration)"),
        ("trial setup", f"{cal.setup_s:.2f} s (data, models, optimizer)"),
        ("checkpoint / export", f"{cal.save_s:.3f} s / {cal.export_s:.3f} s"),
        ("imports", f"{cal.imports_s:.1f} s (torch, transformers, diffusers, peft, torchmetrics)"),
        ("dataset prepare", f"{cal.prepare_s:.1f} s (now cached: the sweep will not pay it again)"),
    ]
    for key, value in rows:
        table.add_row(key, escape(value))
    return table


def _prediction_table(exp: Any, cal: Calibration, pred: Prediction) -> Table:
    e = pred.expectation
    table = Table(title=f"prediction: {exp.name}", show_header=False)
    compute_h = pred.busy_s / 3600
    fixed = {**pred.fixed_before_s, **pred.fixed_after_s}
    unit = (f"{compute_h * exp.resources.gpu:.3f} GPU-hours" if exp.resources.gpu
            else f"{compute_h * exp.resources.cpu:.3f} CPU-core-hours")
    rows = [
        ("trials started", f"{e.trials}, {pred.slots} at a time"),
        ("stopped early", f"{e.stopped_early:.1f} expected ({exp.search.scheduler})"),
        ("evaluations", f"{e.evaluations:.1f} of {e.trials * pred.evaluations_per_trial} "
                        f"({pred.evaluations_per_trial} per full trial)"),
        ("steps trained", f"{e.steps:.0f} of {e.trials * cal.total_steps} ({cal.total_steps} per full trial)"
                          + _spread(e.steps_range, e.steps, lambda v: f"{v:.0f}")),
        ("one full trial", fmt_duration(pred.trial_full_s)),
        ("fixed per sweep", ", ".join(f"{k} {v:.0f} s" for k, v in fixed.items())),
        ("wall time", f"{fmt_duration(pred.wall_s)} ({pred.wall_s:.0f} s)"
                      + _spread(pred.wall_range_s, pred.wall_s, fmt_duration)),
        ("compute", f"{compute_h:.3f} trial-hours = {unit}"),
    ]
    for key, value in rows:
        table.add_row(key, escape(value))
    return table


def _spread(bounds: tuple[float, float], expected: float, fmt: Any) -> str:
    """`; 80% of simulated sweeps: A-B`, where the scheduler's stops make the total vary."""
    low, high = bounds
    if high - low <= 0.01 * max(expected, 1e-9):
        return ""
    return f"; 80% of simulated sweeps: {fmt(low)} to {fmt(high)} (which trials the scheduler stops)"


def print_dry_run_prediction(loaded: Any, console: Console = out) -> Prediction | None:
    """`run --dry-run`'s prediction block (returned); a base that is not built yet is said, not built."""
    from catsith_sweep.plan.calibrate import check_base_ready

    try:
        check_base_ready(loaded.experiment, loaded.path)
    except UserInputError as exc:
        console.print(f"[yellow]no time or cost prediction[/yellow]: {escape(exc.render())}")
        return None
    return print_plan_block(loaded, console=console)[1]


def print_guide_formula(args: argparse.Namespace) -> int:
    result = estimate_training_cost(args.method, args.dataset_size, args.epochs, batch_size=args.batch_size,
                                    gpu_cost_per_hour=args.gpu_cost_per_hour, as_coded=args.guide_as_coded)
    how = "as coded (divides by batch_size)" if args.guide_as_coded else "as its examples print"
    out.print(f"the guide's estimate_training_cost (Appendix: Cost Calculator; fixed A100 images/s), {how}:")
    out.print(escape(str(result)))
    out.print("note: the guide's code also divides by batch_size, which its printed examples do not "
              "(--guide-as-coded: 0.4 h / $0.46 for its first example); its second example prints "
              "33.3 h / $36.67 for 10000 images, the figure for 1000 (10000 give 333.3 h / $366.67)")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    if args.guide_formula:
        if args.experiment or args.overrides:
            raise UserInputError("plan --guide-formula takes --method/--dataset-size/--epochs, not an experiment file")
        return print_guide_formula(args)
    if not args.experiment:
        raise UserInputError("plan: give an experiment file (plan EXP.yaml [key=value ...]) or --guide-formula")
    from catsith_sweep.config import load_experiment
    from catsith_sweep.trainers import require_implemented

    loaded = load_experiment(args.experiment, args.overrides)
    require_implemented(loaded.experiment, loaded.path)
    _, prediction = print_plan_block(loaded, gpus=args.gpu, prices_path=Path(args.prices) if args.prices else None)
    out.print(f"prediction kept for this config: {keep_prediction(loaded, prediction, Path(args.runs_dir))}")
    return 0


def keep_prediction(loaded: Any, prediction: Prediction, runs_root: Path) -> Path:
    """Save `prediction` where the sweep of this same config (fingerprint) finds it: its parent run then
    compares it with what happened (`predicted_wall_seconds` vs `actual_wall_seconds`)."""
    from catsith_sweep.config.fingerprint import config_fingerprint
    from catsith_sweep.plan.saved import save_plan

    return save_plan((runs_root / loaded.experiment.name).resolve(), config_fingerprint(loaded), prediction)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="predict a sweep's wall time, compute and cost from a short calibration")
    p.add_argument("experiment", nargs="?")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.add_argument("--gpu", nargs="+", default=None, metavar="KIND",
                   help="price only these GPU kinds of the price table (default: all)")
    p.add_argument("--prices", default=None, help="a price table YAML (default: catsith_sweep/plan/prices.yaml)")
    p.add_argument("--runs-dir", default="runs", help="where `run` will keep the sweep's state: the prediction is "
                   "saved there for it (default: runs/)")
    p.add_argument("--guide-formula", action="store_true",
                   help="print the guide's estimate_training_cost instead (no calibration)")
    p.add_argument("--guide-as-coded", action="store_true",
                   help="--guide-formula: the guide's code line for line (it also divides by the batch size)")
    p.add_argument("--method", default="lora", help="--guide-formula: lora, distill, vae or full")
    p.add_argument("--dataset-size", type=int, default=1000, help="--guide-formula: images")
    p.add_argument("--epochs", type=int, default=10, help="--guide-formula: epochs")
    p.add_argument("--batch-size", type=int, default=4, help="--guide-formula: batch size")
    p.add_argument("--gpu-cost-per-hour", type=float, default=1.10, help="--guide-formula: $ per hour")
    p.set_defaults(func=cmd_plan)
