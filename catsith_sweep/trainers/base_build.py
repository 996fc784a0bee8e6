"""`base build`: train the builtin base `catsith-tiny` with the full trainer and cache it.

It is an ordinary experiment (trainer `full`), so the same trial loop, checkpoints and exports serve
it; `experiments/base_build.yaml` is this same config, for users who want to change it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from catsith_sweep.config.schema import Experiment
from catsith_sweep.trainers.base import Report, replace_dir, run_trial
from catsith_sweep.trainers.full import FullTrainer

# Sized for a 2-core CPU. v1 (8x8x4 latent, 600 VAE + 2000 UNet steps) took 686 s on an idle machine
# (VAE 0.22 s/step, UNet + text encoder 0.285 s/step at batch 32). v2 (16x16x4 latent) costs per step,
# by FLOP count: VAE 1.10x, UNet 1.40x; with 1200 VAE steps that is an ESTIMATED 18-19 minutes, not yet
# timed on an idle machine. The VAE steps were doubled because the round trip is the ceiling of every
# LoRA: on held-out 16bit / handheld / a rendered sheet (bench/vae_roundtrip.py) 600 steps gave
# 27/33/33 per 255, 900 (600 continued for 300) 22/30/28, 1200 (continued again) 16/19/18; 1200 is
# the most the 20-minute allowance holds (bench/README.md has every probe).
BUILTIN_BASE_CONFIG = {
    "name": "catsith-tiny-base",
    "trainer": "full",
    "train": {"max_steps": 3200, "batch_size": 32, "learning_rate": 1e-3, "lr_scheduler": "cosine",
              "lr_warmup_steps": 100, "num_threads": 2},
    "full": {"vae_steps": 1200, "vae_learning_rate": 2e-3},
    "eval": {"every_n_steps": 800, "num_metric_samples": 48},
}


def builtin_base_experiment(cache_dir: Path | None = None) -> Experiment:
    config = {**BUILTIN_BASE_CONFIG, "model": {"cache_dir": str(cache_dir) if cache_dir else None}}
    return Experiment.model_validate(config)


def build_base(target: Path, *, cache_dir: Path | None = None, experiment: Experiment | None = None,
               log: Callable[[str], None] = print) -> Path:
    """Train the base and put its diffusers folder (and sample grids) at `target`, atomically."""
    experiment = experiment or builtin_base_experiment(cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.build.") as tmp:
        workdir = Path(tmp)

        def report(r: Report) -> None:
            if r.final:  # repeats the last evaluation's metrics, adding the exports
                log(f"[{time.monotonic() - started:6.0f}s] exported: {', '.join(sorted(r.exports))}")
                return
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(r.metrics.items()))
            log(f"[{time.monotonic() - started:6.0f}s] step {r.step}: {shown}")

        run_trial(FullTrainer(experiment, workdir), experiment, workdir, report, log_every=200)
        staging = workdir / "result"
        shutil.copytree(workdir / "export", staging)
        evals = sorted((workdir / "eval").glob("step_*"))
        if evals:
            shutil.copytree(evals[-1], staging / "samples")
        replace_dir(staging, target)
    log(f"built in {time.monotonic() - started:.0f}s: {target}")
    return target
