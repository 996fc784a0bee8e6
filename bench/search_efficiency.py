"""Search efficiency: the compute a full grid and an ASHA + TPE sweep each need to find a good LoRA.

Two real sweeps (`python -m catsith_sweep run`) of one LoRA experiment on the same base, data, held-out
split, trial seed (`train.seed`) and evaluation:

1. grid: `sampler: grid` over lora.rank x train.learning_rate (every combination once, in a seeded
   random order), `scheduler: none`, every trial the whole step budget. It evaluates once, at the end:
   intermediate evaluations would only cost a grid time.
2. asha: `sampler: tpe` over the same choices (categorical: the same candidates, so the grid's best is
   reachable), `scheduler: asha` (grace period 2, reduction factor 3: one rung, after evaluation 2 of 4;
   at grace period 1 the v2 base's best combination looked worst after a quarter of its budget and was
   stopped in every sweep, bench/README.md),
   evaluations every quarter of the budget; as many trials as the grid
   (`--trials` to change), once per `--search-seeds` seed.

Compute is read back from the MLflow store (`catsith_sweep.tracking`): steps = training steps each trial
actually ran (its `loss` history, logged at every step), trial-seconds = its run's wall time. The target
is "within 5% of the grid's best held-out metric" (`--tolerance`); a sweep's compute to reach it is what
all its trials had spent (steps logged, seconds run, trials still running included) when its first
finished trial at the target ended. The goal (issue 13): ASHA + TPE <= 0.35 of the grid's compute.
For reference, the grid's expected compute to reach the target when its trials run one at a time in a
random order (analytic, from the grid's rows).

    PYTHONPATH=$PWD .venv/bin/python bench/search_efficiency.py                    # builtin:catsith-tiny
    PYTHONPATH=$PWD .venv/bin/python bench/search_efficiency.py --tiny \\
        --ranks 2,8 --learning-rates 1e-3,1e-2                                     # a few minutes on a CPU

Steps are the point (independent of the machine); trial-seconds move with the machine's load, printed
with each sweep.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOSS_METRIC = "loss"
"""Logged by the LoRA trainer at every step (`tracking.log_every_n_steps: 1`), and again with each
evaluation at its step: the distinct steps logged are the steps run."""
SEARCHED = ("lora.rank", "train.learning_rate")


@dataclass(frozen=True)
class Profile:
    """The experiment around the searched keys."""

    steps: int
    batch_size: int
    synth_seed: int
    synth_variants: int
    metric_samples: int
    inference_steps: int
    data_extra: str = ""
    """More `data:` keys (flow style, with a leading comma)."""
    lora_extra: str = ""
    """More `lora:` keys (flow style, with a leading comma)."""


REAL = Profile(steps=200, batch_size=16, synth_seed=1, synth_variants=3, metric_samples=48, inference_steps=15,
               data_extra=", synth_style: neon, caption_colors: guide, val_fraction: 0.3",
               lora_extra=(", target_modules: [to_q, to_k, to_v, to_out.0, proj, net.2, time_emb_proj],"
                           " caption_dropout_rate: 0.1"))
"""experiments/lora_style.yaml's setup (the unseen neon style on new designs, 59 held-out images), where
trials really differ: on lora_rank's own-style set every trial ties within noise, so "within 5% of the
grid's best" would be luck."""
TINY = Profile(steps=40, batch_size=8, synth_seed=0, synth_variants=1, metric_samples=16, inference_steps=4)
"""The 40-step tiny base's own synthetic set (cached with it), cheap evaluations."""


# Pure figures --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialCompute:
    """One trial as this bench counts it; times in seconds since the epoch."""

    name: str
    start: float
    end: float
    step_times: tuple[float, ...]
    """When each training step it ran was logged."""
    metric: float | None
    """Its final held-out metric; None unless it finished its whole budget."""
    stopped_early: bool = False

    @property
    def steps(self) -> int:
        return len(self.step_times)

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Compute:
    steps: float
    seconds: float


@dataclass(frozen=True)
class Reach:
    """The first finished trial at the target, and what the sweep had spent when it ended."""

    trial: TrialCompute
    spent: Compute


def target_value(best: float, mode: str, tolerance: float) -> float:
    """The worst value still within `tolerance` (a fraction) of `best`, on the side `mode` calls worse."""
    margin = tolerance * abs(best)
    return best + margin if mode == "min" else best - margin


def at_target(value: float | None, target: float, mode: str) -> bool:
    return value is not None and (value <= target if mode == "min" else value >= target)


def best_value(trials: Sequence[TrialCompute], mode: str) -> float | None:
    values = [t.metric for t in trials if t.metric is not None and math.isfinite(t.metric)]
    return (min(values) if mode == "min" else max(values)) if values else None


def spent_by(trials: Sequence[TrialCompute], moment: float) -> Compute:
    """Steps logged and seconds run by all `trials` up to `moment` (running ones count what they ran)."""
    steps = sum(1 for t in trials for s in t.step_times if s <= moment)
    seconds = sum(max(0.0, min(t.end, moment) - t.start) for t in trials)
    return Compute(steps, seconds)


def total(trials: Sequence[TrialCompute]) -> Compute:
    return Compute(sum(t.steps for t in trials), sum(t.seconds for t in trials))


def compute_to_reach(trials: Sequence[TrialCompute], target: float, mode: str) -> Reach | None:
    """What the sweep had spent when its first finished trial at `target` ended; None if none did."""
    reached = sorted((t for t in trials if at_target(t.metric, target, mode)), key=lambda t: t.end)
    return Reach(reached[0], spent_by(trials, reached[0].end)) if reached else None


def asha_rungs(evaluations: int, grace_period: int, reduction_factor: int) -> list[int]:
    """The evaluations after which ASHA may stop a trial, as Ray's ASHAScheduler sets its rungs for the
    sweep's `max_t` = evaluations + 1 (sweep/tuner.py: the final report is one more iteration)."""
    max_t = evaluations + 1
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [grace_period * reduction_factor**k for k in range(count)]


def expected_in_random_order(costs: Sequence[float], reaches: Sequence[bool]) -> float:
    """Expected cost of running trials one at a time, in a uniformly random order, until the first one
    that reaches the target (included). A trial that does not reach it is run before all K that do with
    probability 1/(K+1); one that does is the first of them with probability 1/K."""
    hits = sum(reaches)
    if hits == 0:
        return math.inf
    return sum(c / hits if hit else c / (hits + 1) for c, hit in zip(costs, reaches, strict=True))


# The sweeps ------------------------------------------------------------------------------------------------
def experiment_yaml(name: str, base: str, profile: Profile, steps: int, evaluate_every: int, search: str) -> str:
    return f"""\
name: {name}
trainer: lora
model: {{base: "{base}"}}
data: {{synth_seed: {profile.synth_seed}, synth_variants: {profile.synth_variants}{profile.data_extra}}}
train: {{max_steps: {steps}, batch_size: {profile.batch_size}, learning_rate: 1.0e-3, lr_scheduler: cosine,
        lr_warmup_steps: {max(1, steps // 16)}, num_threads: 1, seed: 0}}
eval: {{every_n_steps: {evaluate_every}, num_metric_samples: {profile.metric_samples},
       num_inference_steps: {profile.inference_steps}}}
lora: {{rank: 4, alpha: 4.0{profile.lora_extra}}}
tracking: {{log_every_n_steps: 1}}
search:
{search}"""


def search_yaml(ranks: Sequence[int], learning_rates: Sequence[float], **keys: Any) -> str:
    lines = ["  space:", f"    lora.rank: {{type: categorical, values: {list(ranks)}}}",
             f"    train.learning_rate: {{type: categorical, values: {list(learning_rates)}}}",
             "  metric: sprite_fid", "  mode: min"]
    return "\n".join([*lines, *(f"  {k}: {v}" for k, v in keys.items())]) + "\n"


def run_sweep(work: Path, name: str, text: str, env: dict[str, str]) -> tuple[float, float]:
    """Runs the CLI on `text` (the experiment) in `work`; (load average at start, wall seconds)."""
    path = work / f"{name}.yaml"
    path.write_text(text)
    load = os.getloadavg()[0]
    print(f"running {name} (load average {load:.1f}) ...", flush=True)
    started = time.perf_counter()
    with (work / f"{name}.log").open("w") as log:
        proc = subprocess.run([sys.executable, "-m", "catsith_sweep", "run", path.name, "--tracking-uri",
                               tracking_uri(work)], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = (work / f"{name}.log").read_text()[-3000:]
        sys.exit(f"sweep {name} failed ({proc.returncode}); the end of {work / (name + '.log')}:\n{tail}")
    return load, time.perf_counter() - started


def tracking_uri(work: Path) -> str:
    return f"sqlite:///{work / 'mlflow.db'}"


def read_trials(uri: str, name: str) -> tuple[Any, list[TrialCompute]]:
    """The newest finished sweep of MLflow experiment `name` and its trials as TrialCompute."""
    from catsith_sweep.tracking import Outcome, client, queries

    sweep = queries.choose_sweep(uri, name).sweep
    store = client(uri)
    out = []
    for row in queries.trial_rows(uri, sweep):
        if row.start_time is None or row.end_time is None or row.outcome in (Outcome.RUNNING, Outcome.FAILED):
            sys.exit(f"sweep {name}: trial {row.label} ended {row.outcome} ({row.error or 'no error'}): "
                     "its compute cannot be counted")
        first_logged: dict[int, float] = {}
        for entry in sorted(store.get_metric_history(row.run_id, LOSS_METRIC), key=lambda m: m.timestamp):
            first_logged.setdefault(entry.step, entry.timestamp / 1000)
        finished = row.outcome is Outcome.FINISHED
        shown = " ".join(f"{key.split('.')[-1]}={row.param(key)}" for key in SEARCHED if key in row.params)
        out.append(TrialCompute(
            name=f"{row.name.split(' ', 1)[0]} {shown}", start=row.start_time / 1000,
            end=row.end_time / 1000, step_times=tuple(sorted(first_logged.values())),
            metric=row.value(sweep.metric) if finished else None,
            stopped_early=row.outcome is Outcome.STOPPED_EARLY))
    return sweep, out


def noise_floor(uri: str, sweep: Any) -> float | None:
    from catsith_sweep.tracking import queries

    return queries.sweep_metrics(uri, sweep).get(f"noise_floor_{sweep.metric}")


# The report ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepResult:
    label: str
    trials: list[TrialCompute]
    load: float
    wall: float


def show_trials(result: SweepResult, target: float, mode: str) -> None:
    print(f"{result.label}: {len(result.trials)} trials in the order they ended (wall {result.wall:.0f} s, "
          f"load average {result.load:.1f} at start)")
    for t in sorted(result.trials, key=lambda t: t.end):
        value = "stopped early" if t.stopped_early else f"{t.metric:.4g}" if t.metric is not None else "-"
        mark = " at target" if at_target(t.metric, target, mode) else ""
        print(f"  {t.name:<32} {t.steps:>6} steps {t.seconds:>7.1f} s  {value}{mark}")


def summary_row(result: SweepResult, grid_total: Compute, target: float, mode: str) -> list[str]:
    spent, reach = total(result.trials), compute_to_reach(result.trials, target, mode)
    best = best_value(result.trials, mode)
    if reach is None:
        to_target = ["not reached"] * 2 + [f"> {spent.steps / grid_total.steps:.2f}"]
    else:
        to_target = [f"{reach.spent.steps:.0f}", f"{reach.spent.seconds:.0f}",
                     f"{reach.spent.steps / grid_total.steps:.2f} / {reach.spent.seconds / grid_total.seconds:.2f}"]
    return [result.label, str(len(result.trials)), str(sum(t.stopped_early for t in result.trials)),
            f"{spent.steps:.0f}", f"{spent.seconds:.0f}", "-" if best is None else f"{best:.4g}", *to_target]


def print_table(rows: list[list[str]]) -> None:
    heads = ["sweep", "trials", "stopped early", "steps", "trial-s", "best", "steps to target",
             "trial-s to target", "ratio to grid (steps / s)"]
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    for row in [heads, *rows]:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths,
                                                                                                  strict=True))))


def report(grid: SweepResult, searches: list[SweepResult], *, metric: str, mode: str, tolerance: float,
           floor: float | None) -> None:
    best = best_value(grid.trials, mode)
    if best is None:
        sys.exit("the grid has no finished trial with a finite metric: no target")
    target = target_value(best, mode, tolerance)
    shown_floor = "none" if floor is None else f"{floor:.4g}"
    print(f"\ngrid best {metric} {best:.4g}; target (within {tolerance:.0%}) {mode} {target:.4g}; "
          f"the grid's noise floor {shown_floor}")
    if floor is not None and abs(target - best) < floor:
        print(f"  note: the target's margin ({abs(target - best):.4g}) is inside the noise floor: which trials "
              "reach it is partly eval-seed noise")
    for result in [grid, *searches]:
        show_trials(result, target, mode)
    grid_total = total(grid.trials)
    print()
    print_table([summary_row(r, grid_total, target, mode) for r in [grid, *searches]])
    reaches = [at_target(t.metric, target, mode) for t in grid.trials]
    steps = expected_in_random_order([t.steps for t in grid.trials], reaches)
    seconds = expected_in_random_order([t.seconds for t in grid.trials], reaches)
    print(f"grid in a random order, one trial at a time ({sum(reaches)} of {len(reaches)} at target): expected "
          f"{steps:.0f} steps, {seconds:.0f} trial-s to reach it, ratio {steps / grid_total.steps:.2f} / "
          f"{seconds / grid_total.seconds:.2f}")
    ratios = [compute_to_reach(r.trials, target, mode) for r in searches]
    found = [r.spent.steps / grid_total.steps for r in ratios if r is not None]
    if found:
        print(f"ASHA + TPE, compute to the target over the grid's total (steps): median {statistics.median(found):.2f}"
              f" over {len(found)} of {len(searches)} search seeds that reached it (goal <= 0.35)")
    print(f"load average now {os.getloadavg()[0]:.1f} (2 cores: compare trial-seconds only under similar loads)")


# Main ------------------------------------------------------------------------------------------------------
def numbers(kind: type, text: str) -> list[Any]:
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, but got {text!r}") from None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--base", default=None, help="the base model (default: builtin:catsith-tiny; with "
                        "--tiny, a new 40-step tiny base)")
    parser.add_argument("--tiny", action="store_true", help="the tiny profile (40 steps, 16 metric samples, 4 "
                        "sampler steps, the tiny base's own data); builds the tiny base first (~20 s idle) "
                        "unless --base names one (with --cache holding its data)")
    parser.add_argument("--steps", type=int, default=None, help="steps per trial (default: 320, --tiny 40)")
    parser.add_argument("--evaluations", type=int, default=4, help="ASHA sweep's evaluations per trial")
    parser.add_argument("--ranks", type=lambda s: numbers(int, s), default=[2, 4, 8])
    parser.add_argument("--learning-rates", type=lambda s: numbers(float, s), default=[3e-4, 1e-3, 3e-3, 1e-2])
    parser.add_argument("--trials", type=int, default=None, help="ASHA sweep's trials (default: the grid's size)")
    parser.add_argument("--search-seeds", type=lambda s: numbers(int, s), default=[0],
                        help="one ASHA + TPE sweep per seed (search.seed), e.g. 0,1,2")
    parser.add_argument("--grace-period", type=int, default=2)
    parser.add_argument("--reduction-factor", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2, help="max_concurrent_trials of both sweeps")
    parser.add_argument("--tolerance", type=float, default=0.05, help="the target: within this fraction of "
                        "the grid's best")
    parser.add_argument("--tracking", type=Path, default=None, help="a folder for the MLflow store, logs and "
                        "experiment files (kept); default: a temporary folder")
    parser.add_argument("--cache", type=Path, default=None, help="CATSITH_CACHE for the sweeps (default: yours; "
                        "with --tiny a new one in the work folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser.parse_args()


def run_bench(args: argparse.Namespace, work: Path) -> None:
    profile = TINY if args.tiny else REAL
    steps = args.steps or profile.steps
    cache = (args.cache or (work / "cache" if args.tiny else None))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PYTHONUNBUFFERED": "1", **({"CATSITH_CACHE": str(cache.resolve())} if cache else {})}
    base = args.base or "builtin:catsith-tiny"
    if args.tiny and args.base is None:
        from sweep_overhead import build_tiny_base  # bench/, beside this file

        print("building the 40-step tiny base ...", flush=True)
        base = str(build_tiny_base(work, Path(env["CATSITH_CACHE"])))
    size = len(args.ranks) * len(args.learning_rates)
    common = {"max_concurrent_trials": args.concurrency}
    grid_search = search_yaml(args.ranks, args.learning_rates, sampler="grid", scheduler="none", seed=0,
                              num_samples=size, **common)
    load, wall = run_sweep(work, "search_grid", experiment_yaml("search_grid", base, profile, steps, steps,
                                                                  grid_search), env)
    uri = tracking_uri(work)
    grid_sweep, grid_trials = read_trials(uri, "search_grid")
    grid = SweepResult("grid", grid_trials, load, wall)
    searches = []
    for seed in args.search_seeds:
        name = f"search_asha_seed{seed}"
        search = search_yaml(args.ranks, args.learning_rates, sampler="tpe", scheduler="asha", seed=seed,
                             num_samples=args.trials or size, grace_period=args.grace_period,
                             reduction_factor=args.reduction_factor, **common)
        every = max(1, steps // args.evaluations)
        evaluations = -(-steps // every)  # run_trial also evaluates at the end of a partial interval
        rungs = asha_rungs(evaluations, args.grace_period, args.reduction_factor)
        late = rungs[-1] >= evaluations  # stopped there, a trial has spent its whole budget and loses its result
        print(f"ASHA may stop trials after evaluations {rungs} of {evaluations}"
              + (" (the last rung is the final evaluation)" if late else ""), flush=True)
        load, wall = run_sweep(work, name, experiment_yaml(name, base, profile, steps, every, search), env)
        searches.append(SweepResult(f"asha+tpe seed {seed}", read_trials(uri, name)[1], load, wall))
    report(grid, searches, metric=grid_sweep.metric, mode=grid_sweep.mode, tolerance=args.tolerance,
           floor=noise_floor(uri, grid_sweep))


def main() -> None:
    args = parse_args()
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    if args.tracking is not None:
        args.tracking.mkdir(parents=True, exist_ok=True)
        run_bench(args, args.tracking.resolve())
        return
    work = Path(tempfile.mkdtemp(prefix="catsith_search_"))
    keep = args.keep
    try:
        run_bench(args, work)
    except BaseException:
        keep = True  # the sweeps' logs say what went wrong
        raise
    finally:
        if keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
