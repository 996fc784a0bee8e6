"""Are a sweep's rankings stable? Re-evaluate its top trials at new eval seeds; optionally rerun the sweep
with another search seed. Prints Spearman's rho (scipy.stats.spearmanr) of the rankings.

1. Re-evaluation: the top `--top` finished trials of a finished sweep (by its metric), each rebuilt from
   what the trial exported to the MLflow store (`export/config.yaml` and the PEFT LoRA file, read
   through `tracking.queries`/`tracking.artifacts`): the base with the trial's adapter merged in, set up
   by the LoRA trainer and evaluated by its own `evaluate` at `--eval-seeds` new eval seeds
   (`sweep.baseline.with_eval_seed` 1, 2, ...). Seed 0, the trials' own, is evaluated too as a check:
   it must give back the logged metric (a rebuilt model that did not would make the rest meaningless).
   rho compares the sweep's ranking with the ranking by the mean over the new seeds.
2. `--rerun EXP.yaml --search-seed S`: runs the same sweep again (`search.seed=S`, same store). Two
   searches sample different configurations, so trials cannot be paired; what should agree is what the
   sweeps say about each searched key: its values (tercile bins of numbers) ordered by the mean metric
   of their finished trials, rho per key over the values both sweeps tried, and both sweeps' best
   values against the noise floor.

    PYTHONPATH=$PWD .venv/bin/python bench/ranking_stability.py EXPERIMENT_NAME [--tracking-uri URI]
        [--sweep-id ID] [--top 5] [--eval-seeds 2] [--rerun EXP.yaml --search-seed 7 [--set k=v ...]]

LoRA sweeps only (the trainer whose exports rebuild the model exactly); needs the sweep's base and
dataset in CATSITH_CACHE, as the sweep had them.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def spearman(first: Sequence[float], second: Sequence[float]) -> float:
    """Spearman's rho of two score lists over the same items (nan when either is constant)."""
    from scipy.stats import spearmanr

    return float(spearmanr(first, second).statistic)


def rebuild_and_evaluate(uri: str, row: Any, seeds: Sequence[int], work: Path) -> dict[int, float]:
    """The trial `row` rebuilt from its MLflow export; its sweep metric at each eval seed."""
    import torch
    import yaml

    from catsith_sweep.config.schema import Experiment
    from catsith_sweep.export.lora_formats import apply_layers, load_lora_file
    from catsith_sweep.layout import PEFT_LORA_WEIGHTS
    from catsith_sweep.sweep.baseline import with_eval_seed
    from catsith_sweep.tracking import artifacts
    from catsith_sweep.trainers import make_trainer

    export = artifacts.download(uri, row.run_id, artifacts.EXPORT_DIR, work / row.trial)
    if export is None or not (export / PEFT_LORA_WEIGHTS).is_file():
        raise SystemExit(f"trial {row.label}: no export/{PEFT_LORA_WEIGHTS} in its run {row.run_id} "
                         "(a LoRA sweep exporting peft_safetensors is needed)")
    experiment = Experiment.model_validate(yaml.safe_load((export / artifacts.CONFIG_FILE).read_text()))
    trainer: Any = make_trainer(experiment, work / row.trial / "eval")
    trainer.setup()  # the base with a fresh adapter: a no-op until the trained layers are merged in
    layers = load_lora_file(export / PEFT_LORA_WEIGHTS)
    merged = sum(apply_layers(getattr(trainer.parts, component), layers, component=component)
                 for component in ("unet", "text_encoder"))
    if merged != len(layers):
        raise SystemExit(f"trial {row.label}: merged {merged} of {len(layers)} LoRA layers")
    metric = experiment.search.metrics()[0]
    scores = {}
    with torch.no_grad():
        for seed in seeds:
            trainer.exp = with_eval_seed(experiment, seed)  # trainers read their config from `exp`
            scores[seed] = float(trainer.evaluate(work / row.trial / f"seed_{seed}").metrics[metric])
    return scores


def reevaluate(uri: str, experiment_name: str, sweep_id: str | None, top: int, eval_seeds: int) -> None:
    from catsith_sweep.sweep.baseline import floor_of, tie_marks
    from catsith_sweep.tracking import queries, rank

    pick = queries.choose_sweep(uri, experiment_name, sweep_id)
    sweep = pick.sweep
    rows = rank(queries.trial_rows(uri, sweep), sweep.metric, sweep.mode)[:top]
    if len(rows) < 3:
        raise SystemExit(f"{pick.describe()}: {len(rows)} finished trials; a rank correlation needs 3 or more")
    floor = floor_of(queries.sweep_metrics(uri, sweep), sweep.metric)
    new_seeds = list(range(1, eval_seeds + 1))
    shown_floor = "none" if floor is None else f"{floor:.4g}"
    print(f"{pick.describe()}: top {len(rows)} by {sweep.metric} ({sweep.mode}); re-evaluated at eval seeds "
          f"{new_seeds} (seed 0, the sweep's own, as a check); noise floor {shown_floor}")
    with tempfile.TemporaryDirectory(prefix="catsith_rank_") as tmp:
        results = {row.trial: rebuild_and_evaluate(uri, row, [0, *new_seeds], Path(tmp)) for row in rows}
    logged = [row.value(sweep.metric) or math.nan for row in rows]
    again = [statistics.fmean(results[row.trial][s] for s in new_seeds) for row in rows]
    marks = tie_marks(rows, sweep.metric, sweep.mode, floor)
    seed_heads = " ".join(f"{'seed ' + str(s):>9}" for s in new_seeds)
    print(f"{'trial':<34} {'tie':<6} {'logged':>9} {'seed 0':>9} {seed_heads} {'mean new':>9}")
    for row, value, mean in zip(rows, logged, again, strict=True):
        scores = results[row.trial]
        print(f"{row.name[:34]:<34} {marks.get(row.trial, ''):<6} {value:>9.4g} {scores[0]:>9.4g} "
              + " ".join(f"{scores[s]:>9.4g}" for s in new_seeds) + f" {mean:>9.4g}")
    drift = max(abs(results[r.trial][0] - v) for r, v in zip(rows, logged, strict=True))
    print(f"check: seed 0 rebuilt vs logged, max |difference| {drift:.3g}")
    print(f"Spearman rho, logged ranking vs mean over new eval seeds: {spearman(logged, again):.3f} "
          f"(goal >= 0.7)")
    for seed in new_seeds:
        print(f"  vs seed {seed} alone: {spearman(logged, [results[r.trial][seed] for r in rows]):.3f}")


def key_groups(rows: Sequence[Any], key: str, edges: Sequence[float] | None) -> dict[str, list[Any]]:
    """Trials of `rows` by their value of `key`: tercile bins (`edges`) for numbers, else the value."""
    groups: dict[str, list[Any]] = {}
    for row in rows:
        if key not in row.params:
            continue
        value = row.param(key)
        label = ("low", "mid", "high")[sum(float(value) > e for e in edges)] if edges is not None else str(value)
        groups.setdefault(label, []).append(row)
    return groups


def compare_searches(uri: str, experiment_name: str, first_id: str, second_id: str) -> None:
    from catsith_sweep.metrics.noise import within_noise
    from catsith_sweep.sweep.baseline import floor_of
    from catsith_sweep.tracking import Outcome, queries

    picks = [queries.choose_sweep(uri, experiment_name, s).sweep for s in (first_id, second_id)]
    metric, mode = picks[0].metric, picks[0].mode
    finished = [[r for r in queries.trial_rows(uri, p) if r.outcome is Outcome.FINISHED and r.value(metric) is not None]
                for p in picks]
    floor = floor_of(queries.sweep_metrics(uri, picks[0]), metric)
    choose = min if mode == "min" else max
    bests = [choose(r.value(metric) or math.nan for r in rows) for rows in finished]
    tie = "" if floor is None else (" (a tie within the noise floor)" if within_noise(bests[0], bests[1], floor)
                                    else " (apart by more than the noise floor)")
    print(f"best {metric}: sweep {picks[0].sweep_id} {bests[0]:.4g}, sweep {picks[1].sweep_id} {bests[1]:.4g}{tie}")
    keys = sorted({k for rows in finished for r in rows for k in r.params})
    for key in keys:
        values = [r.param(key) for rows in finished for r in rows if key in r.params]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values) and len(set(values)) > 3
        edges = statistics.quantiles([float(v) for v in values], n=3) if numeric else None
        groups = [key_groups(rows, key, edges) for rows in finished]
        shared = sorted(set(groups[0]) & set(groups[1]))
        means = [[statistics.fmean(r.value(metric) for r in g[label]) for label in shared] for g in groups]
        shown = ", ".join(f"{label}: {a:.4g} / {b:.4g}" for label, a, b in zip(shared, *means, strict=True))
        rho = f"rho {spearman(*means):.3f}" if len(shared) >= 3 else f"{len(shared)} shared values: no rho"
        print(f"  {key}: mean {metric} per value, first / second sweep: {shown}; {rho}")


def rerun(experiment_file: Path, search_seed: int, uri: str, overrides: Sequence[str]) -> None:
    command = [sys.executable, "-m", "catsith_sweep", "run", str(experiment_file), f"search.seed={search_seed}",
               *overrides, "--tracking-uri", uri]
    print("rerunning:", " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("experiment_name", help="the MLflow experiment (the experiment's `name`)")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--sweep-id", default=None, help="default: the newest finished sweep")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--eval-seeds", type=int, default=2, help="new eval seeds per trial (1, 2, ...)")
    parser.add_argument("--rerun", type=Path, default=None, help="the experiment file: run the sweep again")
    parser.add_argument("--search-seed", type=int, default=7, help="search.seed of the rerun")
    parser.add_argument("--set", action="append", default=[], help="more overrides for the rerun (k=v)")
    args = parser.parse_args()
    import torch

    from catsith_sweep.tracking import normalize_uri, queries

    torch.set_num_threads(1)
    uri = normalize_uri(args.tracking_uri)
    first = queries.choose_sweep(uri, args.experiment_name, args.sweep_id).sweep
    reevaluate(uri, args.experiment_name, first.sweep_id, args.top, args.eval_seeds)
    if args.rerun is not None:
        rerun(args.rerun, args.search_seed, uri, args.set)
        second = queries.choose_sweep(uri, args.experiment_name).sweep
        print(f"\nsearch seed {args.search_seed}: sweep {second.sweep_id} against {first.sweep_id}")
        reevaluate(uri, args.experiment_name, second.sweep_id, args.top, args.eval_seeds)
        compare_searches(uri, args.experiment_name, first.sweep_id, second.sweep_id)


if __name__ == "__main__":
    main()
