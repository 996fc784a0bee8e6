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
from typing import Any

from catsith_sweep.config.schema import Experiment, FullSection
from catsith_sweep.io import atomic_write_json, file_lock, replace_dir
from catsith_sweep.layout import BASE_METRICS_FILE, EVAL_DIR, EXPORT_DIR, SAMPLES_DIR
from catsith_sweep.models.base_source import builtin_ready
from catsith_sweep.models.builtin import builtin_dir, parse_builtin
from catsith_sweep.progress import Phase, PhasedEta, ProgressLine
from catsith_sweep.trainers.base import Report, run_trial

# Sized for a 2-core CPU. v1 (8x8x4 latent, 600 VAE + 2000 UNet steps) took 686 s on an idle machine;
# v2 (16x16x4 latent, 1200 VAE steps at batch 16, then 2000 UNet steps) 14 min 40 s. v3 keeps v2's
# schedule and adds 4 latent channels and `vae_chroma_weight: 1` (session 4). VAE stage probes
# (bench/vae_stage_probe.py NAME cosine 1200 2e-3 --threads 1 [--vae latent_channels=8] [--full ...]),
# round trip /255 own-heldout, handheld, rendered sheet (colour), own-heldout alpha, flat hues:
#   v2 recipe (the v2 build):     22.5, 27.9, 28.7, 1.3, hues 45.6 (every hue on a blue-yellow axis)
#   8 channels, chroma 0.5:       18.7, 32.2, 29.9, 2.1, hues 45.4 (greens come back orange)
#   8 channels, chroma 1 (v3):    16.5, 17.2, 15.7, 3.8, hues 18.1 (rendered-sheet alpha 9.1; v2 7.0)
# Tried and not kept, a first 8-channel build: VAE norm groups of 8+ channels, 2400 VAE steps at batch
# 8, chroma 2, 48-token captions: every hue right but blurred (24.2, 43.0, 35.7, 5.5, hues 25.1), the
# demo +10.6% (v2 +16.1%) in 11 min 20 s, build 18 min 19 s.
BUILTIN_BASE_CONFIG = {
    "name": "catsith-tiny-base",
    "trainer": "full",
    "train": {"max_steps": 3200, "batch_size": 32, "learning_rate": 1e-3, "lr_scheduler": "cosine",
              "lr_warmup_steps": 100, "num_threads": 2},
    "full": {"vae_steps": 1200, "vae_learning_rate": 2e-3, "vae_chroma_weight": 1.0},
    "eval": {"every_n_steps": 800, "num_metric_samples": 48},
}


def builtin_base_experiment(cache_dir: Path | None = None) -> Experiment:
    config = {**BUILTIN_BASE_CONFIG, "model": {"cache_dir": str(cache_dir) if cache_dir else None}}
    return Experiment.model_validate(config)


UNET_STEP_PRIOR = 1.3
"""Before the UNet phase runs, its s/step is estimated as the VAE phase's measured s/step times this
(0.285 / 0.22 s/step at batch 32 / VAE batch 16, measured on a 2-core CPU); measured once it starts."""
EVAL_PRIOR_STEPS = 20.0
"""Before the first evaluation is timed, one evaluation and checkpoint count as this many steps."""


def evaluation_steps(total_steps: int, every_n_steps: int) -> list[int]:
    """The steps `run_trial` evaluates at: every `every_n_steps`, and at the end."""
    return [*range(every_n_steps, total_steps, every_n_steps), total_steps]


PROBE_STEPS = 2
"""Steps of each phase timed before the build (after a warm-up step each), for the first ETA."""
TRAINING_FIGURES = ("loss", "lr", "vae_kl", "vae_recon")
"""What the full trainer's `train` reports beside an evaluation (the last step's), kept out of metrics.json."""


def probe_rates(trainer: Any, experiment: Experiment) -> tuple[float, float | None]:
    """(VAE, UNet) seconds per step, timed on scratch state before the build: a warm-up step and
    `PROBE_STEPS` steps of each phase. The build's own `setup` then starts everything again from the
    seed (models, optimizers, generators, latent cache), so the built base is the same."""
    noop = lambda step, metrics: None  # noqa: E731
    trainer.setup()
    vae_steps = min(experiment.trainer_config(FullSection).vae_steps, trainer.total_steps())
    rates: list[float | None] = []
    for start in (0, vae_steps):
        if start >= trainer.total_steps():
            rates.append(None)
            continue
        trainer.step = start
        trainer.train(1, noop)  # warm-up (and, for the UNet, the latent cache)
        began = time.perf_counter()
        trainer.train(PROBE_STEPS, noop)
        rates.append((time.perf_counter() - began) / PROBE_STEPS)
    trainer.step = 0
    return rates[0] or 0.0, rates[1]


def build_eta(experiment: Experiment, total_steps: int, probed: tuple[float, float | None] | None = None) -> PhasedEta:
    """The ETA arithmetic of a build: the VAE phase, the UNet phase, and the evaluations of the UNet
    phase (those of the VAE phase evaluate nothing). The UNet prior scales with the batch sizes."""
    full = experiment.trainer_config(FullSection)
    vae_steps = min(full.vae_steps, total_steps)
    unet_ratio = UNET_STEP_PRIOR * (experiment.train.batch_size / full.vae_batch_size) / (32 / 16)
    vae_rate, unet_rate = probed or (None, None)
    phases = [Phase("vae", vae_steps, prior_rate=vae_rate),
              Phase("unet", total_steps - vae_steps, prior_ratio=unet_ratio, prior_rate=unet_rate)]
    evaluations = len([s for s in evaluation_steps(total_steps, experiment.eval.every_n_steps) if s > vae_steps])
    return PhasedEta([p for p in phases if p.units > 0], pauses_left=evaluations, pause_prior_units=EVAL_PRIOR_STEPS)


def build_base(target: Path, *, cache_dir: Path | None = None, experiment: Experiment | None = None,
               log: Callable[[str], None] = print) -> Path:
    """Train the base and put its folder at `target`, atomically: `diffusers/` (the pipeline),
    `config.yaml`, `samples/` (the last evaluation's grids) and `metrics.json` (that evaluation's held-out
    metrics, to compare builds). `model.base: <target>` loads it.
    Progress (steps, elapsed, ETA from the measured s/step of each phase) goes to stdout."""
    from catsith_sweep.trainers.full import FullTrainer  # torch and diffusers: only when building

    experiment = experiment or builtin_base_experiment(cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.build.") as tmp:
        workdir = Path(tmp)
        trainer = FullTrainer(experiment, workdir)
        probed = probe_rates(trainer, experiment)
        log(f"timed {PROBE_STEPS} steps of each phase ahead: VAE {probed[0]:.3f} s/step"
            + (f", UNet {probed[1]:.3f} s/step" if probed[1] else ""))
        eta = build_eta(experiment, trainer.total_steps(), probed)
        with ProgressLine(f"building {experiment.name}", trainer.total_steps(), eta_s=eta.remaining_s(),
                          note=eta.describe()) as bar:
            evaluation = run_trial(trainer, experiment, workdir, _build_reporter(eta, bar, log, started),
                                   log_every=1)
        staging = workdir / "result"
        shutil.copytree(workdir / EXPORT_DIR, staging)
        held_out = {k: v for k, v in evaluation.metrics.items() if k not in TRAINING_FIGURES}
        atomic_write_json(staging / BASE_METRICS_FILE, {"step": evaluation.step, "split": "held-out",
                                                        "metrics": held_out}, sort_keys=True)
        evals = sorted((workdir / EVAL_DIR).glob("step_*"))
        if evals:
            shutil.copytree(evals[-1], staging / SAMPLES_DIR)
        replace_dir(staging, target)
    log(f"built in {time.monotonic() - started:.0f}s: {target}")
    return target


def _build_reporter(eta: PhasedEta, bar: ProgressLine, log: Callable[[str], None],
                    started: float) -> Callable[[Report], None]:
    """Feeds every step's time to the ETA; prints evaluations (and a step line every 200 steps)."""
    state: dict[str, Any] = {"last": time.monotonic(), "step": 0}

    def report(r: Report) -> None:
        now = time.monotonic()
        stamp = f"[{now - started:6.0f}s]"
        if r.checkpoint is not None or r.final:  # an evaluation after r.step (the final report: the last)
            if r.step > eta.phases[0].units or len(eta.phases) == 1:
                eta.pause(now - state["last"])
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(r.metrics.items()))
            bar.print(f"{stamp} step {r.step}: {shown}")
            if r.final:
                bar.print(f"{stamp} exported: {', '.join(sorted(r.exports))}")
        else:
            eta.advance(r.step - state["step"], now - state["last"])
            state["step"] = r.step
            if r.step % 200 == 0:
                shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(r.metrics.items()))
                bar.print(f"{stamp} step {r.step}: {shown}")
        state["last"] = now
        bar.update(eta.done, total=eta.total, eta_s=eta.remaining_s(), note=eta.describe())

    return report


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
