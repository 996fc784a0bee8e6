"""`base build`: train the builtin base `catsith-tiny` with the full trainer and cache it.

It is an ordinary experiment (trainer `full`), so the same trial loop, checkpoints and exports serve
it; `experiments/base_build.yaml` is this same config, for users who want to change it. Building lives
here, in the trainers layer; `models.base_source` only resolves and loads a base that exists.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from catsith_sweep.config.schema import Experiment
from catsith_sweep.io import file_lock, replace_dir
from catsith_sweep.layout import EVAL_DIR, EXPORT_DIR, SAMPLES_DIR
from catsith_sweep.models.base_source import builtin_ready
from catsith_sweep.models.builtin import builtin_dir, parse_builtin
from catsith_sweep.trainers.base import Report, run_trial

# Sized for a 2-core CPU: about 12-13 minutes on an idle machine (measured rates: VAE 0.22 s/step,
# UNet + text encoder 0.285 s/step at batch 32), inside the 15-minute target.
BUILTIN_BASE_CONFIG = {
    "name": "catsith-tiny-base",
    "trainer": "full",
    "train": {"max_steps": 2600, "batch_size": 32, "learning_rate": 1e-3, "lr_scheduler": "cosine",
              "lr_warmup_steps": 100, "num_threads": 2},
    "full": {"vae_steps": 600},
    "eval": {"every_n_steps": 650, "num_metric_samples": 48},
}


def builtin_base_experiment(cache_dir: Path | None = None) -> Experiment:
    config = {**BUILTIN_BASE_CONFIG, "model": {"cache_dir": str(cache_dir) if cache_dir else None}}
    return Experiment.model_validate(config)


def build_base(target: Path, *, cache_dir: Path | None = None, experiment: Experiment | None = None,
               log: Callable[[str], None] = print) -> Path:
    """Train the base and put its folder at `target`, atomically: `diffusers/` (the pipeline),
    `config.yaml` and `samples/` (the last evaluation's grids). `model.base: <target>` loads it."""
    from catsith_sweep.trainers.full import FullTrainer  # torch and diffusers: only when building

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
        shutil.copytree(workdir / EXPORT_DIR, staging)
        evals = sorted((workdir / EVAL_DIR).glob("step_*"))
        if evals:
            shutil.copytree(evals[-1], staging / SAMPLES_DIR)
        replace_dir(staging, target)
    log(f"built in {time.monotonic() - started:.0f}s: {target}")
    return target


def ensure_builtin(base: str, cache_dir: Path | None, *, log: Callable[[str], None] = print) -> None:
    """Build the builtin base `base` names if it is not in the cache yet; nothing for other bases.

    Under a lock, so concurrent callers on one machine wait for one build and then reuse it.
    """
    name = parse_builtin(base)
    if name is None or builtin_ready(base, cache_dir):
        return
    target = builtin_dir(name, cache_dir)
    with file_lock(target.parent / f".{target.name}.lock"):
        if builtin_ready(base, cache_dir):  # built by another process while we waited
            return
        log(f"building {base} (first use; cached in {target})")
        build_base(target, cache_dir=cache_dir, log=log)
