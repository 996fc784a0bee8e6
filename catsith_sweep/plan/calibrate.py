"""Measure this experiment's trainer on this machine: a few real training steps and reduced
evaluations through the public trainer API (`make_trainer` -> setup / train / evaluate / save /
export), on the experiment's own model, batch, data and device.

Evaluation time is extrapolated, not measured at full size: a diffusion trainer's evaluation runs the
sampler `eval.num_inference_steps` times over the same images, so its time is `a + b * k` for k
sampler steps. Two evaluations at k = 1 and k = 5 (after a warm-up one, which also trains and caches
the dataset's sprite feature network on first use) give a and b; the full evaluation is a + b * K.
Evaluations of other trainers (the SpriteVAE) have no sampler: they run once at full size.
"""

from __future__ import annotations

import importlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from catsith_sweep.errors import UserInputError

if TYPE_CHECKING:
    from catsith_sweep.config.schema import Experiment

# Imported by every trial process; what one costs is measured here when they are not yet loaded.
ML_STACK = ("torch", "transformers", "diffusers", "peft", "torchmetrics")
CAP_SECONDS = 60.0
CAP_SHARE = 0.02  # of the predicted sweep time
MIN_TIMED_STEPS = 6
"""Steps always timed one by one (their median is s/step). A CPU step of the builtin varies 0.19-0.32 s
from one to the next; the 2 steps timed before read 0.298 s for a sweep whose steps took ~0.23 s, and
the plan over-predicted it by 20% per trial."""


@dataclass
class Calibration:
    """What the planner measured (seconds), and how."""

    device: str
    total_steps: int
    imports_s: float
    setup_s: float
    step_s: float
    steps_timed: int
    eval_s: float
    eval_method: str
    first_eval_s: float
    save_s: float
    export_s: float
    prepare_s: float
    calibration_s: float = 0.0
    """Seconds spent measuring, without `cache_work_s`."""
    cache_work_s: float = 0.0
    """The first evaluation's extra over a normal one: one-time work (the dataset's sprite feature net,
    trained and cached on first use) that the sweep's baseline evaluation would otherwise do."""
    cap_s: float = CAP_SECONDS
    notes: list[str] = field(default_factory=list)


def eval_scales_with_sampler(experiment: Experiment) -> bool:
    """Whether this trainer's evaluation runs the diffusion sampler (time linear in its steps).
    (Switch to the trainer's declared surface once trainers declare one.)"""
    return experiment.trainer in ("lora", "full", "distill")


def trial_step_budget(trainer: object) -> int:
    """Optimizer steps one trial takes: the trainer's own `total_steps()` after setup (it knows the
    dataset size that `train.epochs` needs). The one place to switch to a shared step formula."""
    return int(trainer.total_steps())  # type: ignore[attr-defined]


def phase_notes(experiment: Experiment) -> list[str]:
    """Where the calibration cannot see the whole trial (switch to the trainer's declared surface)."""
    if experiment.trainer == "full":
        return [f"the full trainer trains the VAE alone for its first {experiment.full.vae_steps} steps "  # type: ignore[union-attr]
                "and evaluates nothing until then: calibration saw only that phase, so s/step and s/eval "
                "of the UNet phase are NOT measured and this prediction is unreliable"]
    return []


def check_base_ready(experiment: Experiment, source: object) -> None:
    """Refuse to plan (rather than silently build the 11-minute builtin base) when the base is missing."""
    from catsith_sweep.models.base_source import builtin_ready
    from catsith_sweep.trainers import NEEDS_BASE

    if experiment.trainer in NEEDS_BASE and not builtin_ready(experiment.model.base, experiment.model.cache_dir):
        raise UserInputError(
            f"{source}: model.base {experiment.model.base} is not built yet in the cache "
            f"(CATSITH_CACHE or model.cache_dir); plan calibrates on the real base and will not start its "
            "~11-minute build. Build it first: python -m catsith_sweep base build "
            "(or plan with model.base=<a diffusers folder>)")


def _import_seconds() -> float:
    import sys

    start = time.perf_counter()
    for name in ML_STACK:
        if name not in sys.modules:
            importlib.import_module(name)
    return time.perf_counter() - start


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def calibrate(experiment: Experiment, *, source: object, estimate: Callable[[Calibration], float],
              log: Callable[[str], None] = print) -> Calibration:
    """Measure `experiment`'s trainer. `estimate(cal)` predicts the sweep's seconds from a rough
    calibration; the cap is min(60 s, 2% of it), and whatever of the cap is left after the minimum
    (setup, 1 + MIN_TIMED_STEPS steps, the evaluations) buys more timed steps."""
    from catsith_sweep.trainers import make_trainer, prepare

    check_base_ready(experiment, source)
    exp = experiment.model_copy(deep=True)  # evaluations below change its eval settings
    imports_s = _import_seconds()
    prepare_s = _timed(lambda: prepare(exp, log=log))
    with tempfile.TemporaryDirectory(prefix="catsith_plan_") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        trainer = make_trainer(exp, work)
        setup_s = _timed(trainer.setup)
        total = trial_step_budget(trainer)
        noop = lambda step, metrics: None  # noqa: E731
        _timed(lambda: trainer.train(1, noop))  # warm-up: first-call allocations
        step_s = statistics.median(_timed(lambda: trainer.train(1, noop)) for _ in range(MIN_TIMED_STEPS))
        eval_s, eval_method, first_eval_s, warmup_extra_s = _evaluations(trainer, exp, work)
        save_s = _timed(lambda: trainer.save(work / "checkpoint"))
        cal = Calibration(device=_device_name(exp), total_steps=total, imports_s=imports_s, setup_s=setup_s,
                          step_s=step_s, steps_timed=MIN_TIMED_STEPS, eval_s=eval_s, eval_method=eval_method,
                          first_eval_s=first_eval_s, save_s=save_s, export_s=0.0, prepare_s=prepare_s)
        cal.cap_s = min(CAP_SECONDS, CAP_SHARE * estimate(cal))
        cal.cache_work_s = warmup_extra_s
        left = cal.cap_s - (time.perf_counter() - started - cal.cache_work_s)
        extra = max(0, min(200, int(left * 0.7 / max(step_s, 1e-6)), total - 1 - MIN_TIMED_STEPS))
        if extra >= MIN_TIMED_STEPS:  # enough for a mean as steady as the median above
            timed = extra + MIN_TIMED_STEPS
            cal.step_s = (_timed(lambda: trainer.train(extra, noop)) + MIN_TIMED_STEPS * step_s) / timed
            cal.steps_timed = timed
        cal.export_s = _timed(lambda: trainer.export(work / "export"))
        cal.calibration_s = time.perf_counter() - started - cal.cache_work_s
    cal.notes += phase_notes(exp)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cal.notes.append(f"load average {load:.1f} on {os.cpu_count()} CPU(s) during calibration: the measured "
                     "seconds (and so the prediction) hold for a machine this busy")
    if cal.calibration_s > cal.cap_s:
        cal.notes.append(f"calibration took {cal.calibration_s:.1f} s, over its cap of {cal.cap_s:.1f} s: its "
                         f"minimum (setup {setup_s:.1f} s, {1 + MIN_TIMED_STEPS} steps, the evaluations) costs that "
                         "much here")
    return cal


def _evaluations(trainer: object, exp: Experiment, work: Path) -> tuple[float, str, float, float]:
    """(seconds of one full evaluation, how it was obtained, seconds of the first (warm-up) one, and
    what that first one took beyond the same evaluation run again: one-time cache work)."""
    evaluate = trainer.evaluate  # type: ignore[attr-defined]
    full_k = exp.eval.num_inference_steps
    if not eval_scales_with_sampler(exp) or full_k <= 5:
        first = _timed(lambda: evaluate(work / "eval0"))
        again = _timed(lambda: evaluate(work / "eval1"))
        return again, "measured at full size (after a warm-up evaluation)", first, max(0.0, first - again)
    exp.eval.num_inference_steps = 1
    first = _timed(lambda: evaluate(work / "eval0"))
    t1 = _timed(lambda: evaluate(work / "eval1"))
    k2 = min(full_k, 5)  # more leverage than k=2 or 3 against timing noise on a busy machine
    exp.eval.num_inference_steps = k2
    t2 = _timed(lambda: evaluate(work / "eval2"))
    exp.eval.num_inference_steps = full_k
    per_step = max(0.0, (t2 - t1) / (k2 - 1))
    fixed = max(0.0, t1 - per_step)
    method = (f"extrapolated: {t1:.2f} s at 1 sampler step, {t2:.2f} s at {k2} -> "
              f"{fixed:.2f} + {per_step:.3f} x {full_k} steps")
    return fixed + per_step * full_k, method, first, max(0.0, first - t1)


def _device_name(exp: Experiment) -> str:
    import torch

    wants_cuda = exp.train.device == "cuda" or (exp.train.device == "auto" and torch.cuda.is_available())
    if wants_cuda:
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu ({exp.train.num_threads or max(1, int(exp.resources.cpu))} thread(s))"
