"""Sweep efficiency and tracking cost, measured side by side in one run.

1. Runs a real sweep of 8 short LoRA trials (2 at a time) on a tiny base and compares its wall time with
   the ideal: the sum of the trials' own times divided by the concurrency. The difference is what Ray
   start-up, scheduling, trial start-up (imports, reused actors) and the driver's summary cost. Where it
   goes: "to first trial" (command start to the first trial's MLflow run) and "after last trial" (the
   last trial run's end to the command's end: summary, plots, shutdown).
   `--repeat 2` (default) runs the same sweep again on the same setup: the first pays for the baseline
   evaluation (cold cache), the later ones reuse it, as a user's second sweep does.
2. From the same sweeps: the share of each trial's time spent in tracking calls (target < 2%).
3. Side by side, per logged step: one synchronous `log_metric` per metric (the naive way) against the
   trial logger's single asynchronous `log_batch`, on the same sqlite store.

    .venv/bin/python bench/sweep_overhead.py [--trials 8] [--steps 40] [--repeat 2] [--base DIR]

Prints medians and ratios; needs a few minutes on a 2-core CPU. The load average is printed with each
sweep: on a shared machine, compare only runs made under a similar load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPERIMENT = """\
name: bench_sweep
trainer: lora
model: {{base: "{base}"}}
data: {{synth_variants: 1}}
train: {{max_steps: {steps}, batch_size: 8, num_threads: 1}}
eval: {{every_n_steps: {every}, num_metric_samples: 8, seeds: [0], num_inference_steps: 4}}
tracking: {{log_every_n_steps: 1}}
search:
  space:
    lora.rank: {{type: categorical, values: [2, 4, 8]}}
    train.learning_rate: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}
  scheduler: none
  num_samples: {trials}
  max_concurrent_trials: 2
"""


def build_tiny_base(root: Path, cache: Path) -> Path:
    target = root / "tiny_base"
    code = ("from pathlib import Path; from catsith_sweep.config.schema import Experiment;"
            "from catsith_sweep.trainers.base_build import build_base;"
            "e = Experiment.model_validate({'name': 'b', 'trainer': 'full', 'data': {'synth_variants': 1},"
            "'train': {'max_steps': 40, 'batch_size': 8, 'num_threads': 2}, 'full': {'vae_steps': 20},"
            "'eval': {'every_n_steps': 40, 'num_metric_samples': 8, 'seeds': [0]}});"
            f"build_base(Path('{target}'), experiment=e, log=lambda m: None)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "CATSITH_CACHE": str(cache)})
    return target / "diffusers"


def sweep_efficiency(work: Path, base: Path, cache: Path, trials: int, steps: int, label: str) -> dict[str, float]:
    (work / "exp.yaml").write_text(EXPERIMENT.format(base=base, steps=steps, every=steps // 2, trials=trials))
    env = {**os.environ, "CATSITH_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    load = os.getloadavg()[0]
    began = time.time()
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "catsith_sweep", "run", "exp.yaml"], cwd=work, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    ended = time.time()
    if proc.returncode != 0:
        sys.exit(f"the sweep failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bench_sweep")
    assert experiment is not None, "the sweep wrote no MLflow experiment"
    newest = max((r for r in client.search_runs([experiment.experiment_id])
                  if r.data.tags.get("catsith.run_kind") == "sweep"), key=lambda r: r.info.start_time)
    runs = [r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("mlflow.parentRunId") == newest.info.run_id]
    trial_seconds = [r.data.metrics["trial_seconds"] for r in runs]
    tracking_seconds = [r.data.metrics["tracking_seconds"] for r in runs]
    ideal = sum(trial_seconds) / 2
    shares = [t / s for t, s in zip(tracking_seconds, trial_seconds, strict=True)]
    head = min(r.info.start_time for r in runs) / 1000 - began
    tail = ended - max(r.info.end_time for r in runs) / 1000
    baseline = next((line.strip() for line in proc.stdout.splitlines() if "baseline " in line
                     and ("evaluated (" in line or "reused" in line)), "baseline: (no line)")
    print(f"sweep {label}: {len(runs)} trials x {steps} steps, 2 at a time; load average {load:.1f} at start")
    print(f"  wall {wall:.1f} s, ideal (sum of trial times / 2) {ideal:.1f} s, ratio {wall / ideal:.2f}")
    print(f"  to first trial {head:.1f} s, after last trial {tail:.1f} s; {baseline}")
    print(f"  median trial {statistics.median(trial_seconds):.1f} s")
    print(f"  tracking share of trial time: median {100 * statistics.median(shares):.2f}%, "
          f"max {100 * max(shares):.2f}% (target < 2%)")
    return {"wall": wall, "ideal": ideal, "ratio": wall / ideal, "share_max": max(shares), "load": load}


def per_step_logging(work: Path, steps: int = 60, metrics: int = 3) -> None:
    import mlflow
    from mlflow.entities import Metric

    uri = f"sqlite:///{work / 'logging.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("logging")
    naive, batched = [], []
    for _rep in range(3):
        run_a = client.create_run(experiment_id).info.run_id
        run_b = client.create_run(experiment_id).info.run_id
        for step in range(steps):
            started = time.perf_counter()
            for m in range(metrics):
                client.log_metric(run_a, f"m{m}", float(step), step=step)
            naive.append(time.perf_counter() - started)
            started = time.perf_counter()
            now = int(time.time() * 1000)
            client.log_batch(run_b, metrics=[Metric(f"m{m}", float(step), now, step) for m in range(metrics)],
                             synchronous=False)
            batched.append(time.perf_counter() - started)
        mlflow.flush_async_logging()
    a, b = statistics.median(naive) * 1000, statistics.median(batched) * 1000
    print(f"per logged step ({metrics} metrics, sqlite): synchronous log_metric {a:.1f} ms, "
          f"async log_batch {b:.2f} ms, ratio {a / b:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=2, help="sweeps on the same setup (the first evaluates "
                        "the baseline, the others reuse it from the cache)")
    parser.add_argument("--base", type=Path, default=None, help="a diffusers folder to use as the base "
                        "(default: build a 40-step tiny base first, ~20 s)")
    parser.add_argument("--cache", type=Path, default=None, help="CATSITH_CACHE holding --base's synth set and "
                        "sprite net (default: a new one; its baselines/ folder is emptied first either way)")
    parser.add_argument("--skip-logging", action="store_true", help="skip measurement 3")
    args = parser.parse_args()
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    with tempfile.TemporaryDirectory(prefix="catsith_bench_") as tmp:
        work, cache = Path(tmp), (args.cache or Path(tmp) / "cache").resolve()
        shutil.rmtree(cache / "baselines", ignore_errors=True)  # the first sweep evaluates its baseline
        if not args.skip_logging:
            per_step_logging(work)
        base = args.base.resolve() if args.base else build_tiny_base(work, cache)
        results = [sweep_efficiency(work, base, cache, args.trials, args.steps,
                                    "1 (cold baseline cache)" if i == 0 else f"{i + 1} (same setup)")
                   for i in range(args.repeat)]
        if len(results) > 1:
            print("ratios: " + ", ".join(f"{r['ratio']:.2f}" for r in results)
                  + f"; later sweeps' median {statistics.median(r['ratio'] for r in results[1:]):.2f}")


if __name__ == "__main__":
    main()
