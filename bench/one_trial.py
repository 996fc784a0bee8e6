"""One trial of an experiment, outside Ray and MLflow, with overrides; prints its held-out metrics at
every evaluation (and, with --base-eval, before training). For quick A/B probes of a trainer setting.

    PYTHONPATH=$PWD .venv/bin/python bench/one_trial.py experiments/lora_style.yaml \\
        lora.rank=16 lora.alpha=16 train.learning_rate=1e-3 train.max_steps=480 eval.every_n_steps=160 \\
        --base-eval --workdir /tmp/one_trial

Overrides are checked as `run` checks them; the trial uses the experiment's own values plus the
overrides (its `search:` section is not sampled). Session 3 used it to find why the neon demo's
adapters did not learn (README, demo).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHOWN = ("sprite_fid", "sprite_kid", "palette_distance", "kind_accuracy", "recon_mse", "latency_ratio")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiment", type=Path)
    parser.add_argument("overrides", nargs="*", help="key.path=value")
    parser.add_argument("--base-eval", action="store_true", help="also evaluate before any training")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/one_trial"))
    args = parser.parse_args()

    from catsith_sweep.config.loader import load_experiment
    from catsith_sweep.errors import UserInputError
    from catsith_sweep.trainers import make_trainer, prepare
    from catsith_sweep.trainers.base import Report, run_trial

    try:
        experiment = load_experiment(args.experiment, args.overrides).experiment  # checked as `run` checks it
    except UserInputError as exc:
        print(exc, file=sys.stderr)
        return 2
    prepare(experiment, log=lambda message: None)

    def show(step: int, metrics: dict[str, float], elapsed: float) -> None:
        figures = " ".join(f"{k}={metrics[k]:.4g}" for k in SHOWN if k in metrics)
        print(f"step {step} ({elapsed:.0f} s): {figures}", flush=True)

    if args.base_eval:
        trainer = make_trainer(experiment, args.workdir / "before")
        trainer.setup()
        show(0, trainer.evaluate(args.workdir / "before" / "eval").metrics, 0.0)
    started = time.time()

    def report(r: Report) -> None:
        if r.checkpoint is not None or r.final:
            show(r.step, r.metrics, time.time() - started)

    run_trial(make_trainer(experiment, args.workdir), experiment, args.workdir, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
