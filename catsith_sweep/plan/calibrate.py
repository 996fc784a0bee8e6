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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catsith_sweep.errors import UserInputError

if TYPE_CHECKING:
    from catsith_sweep.config.schema import Experiment

# Imported by every trial process; what one costs is measured here when they are not yet loaded.
ML_STACK = ("torch", "transformers", "diffusers", "peft", "torchmetrics")
CAP_SECONDS = 60.0
CAP_SHARE = 0.02  # of the predicted sweep time
STEP_ROUNDS = 4
STEPS_PER_ROUND = 3
MIN_TIMED_STEPS = STEP_ROUNDS * STEPS_PER_ROUND
"""Steps always timed one by one, in `STEP_ROUNDS` rounds spread over the calibration (before, between
and after its evaluations); s/step is their mean, since a sweep pays the mean. Why spread: this 2-core VM's
speed drifts over seconds (rounds of 6 LoRA steps of the builtin read 0.161-0.298 s/step over 6 processes a
minute apart, and 0.229 then 0.161 within one), so 6 steps timed back to back read 0.166 s or 0.25 s minutes
apart, for a sweep whose steps averaged ~0.21 s. The rounds' spread (`step_spread`) widens the predicted range."""


@dataclass
class Calibration:
    """What the planner measured (seconds), and how."""

    device: str
    total_steps: int
    imports_s: float
    setup_s: float
    step_s: float
    steps_timed: int
    round_step_s: list[float]
    """Mean s/step of each round of single steps (`STEP_ROUNDS`), in the order they were timed."""
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
    variants: list[tuple[dict[str, Any], float]] = field(default_factory=list)
    """(searched values, s/step with them over this config's) for values that change a step's cost."""
    config_step_s: float = 0.0
    """s/step of this config's own values (`step_s` is it times `variant_factor`)."""
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
              space: Mapping[str, Any] | None = None, log: Callable[[str], None] = print) -> Calibration:
    """Measure `experiment`'s trainer. `estimate(cal)` predicts the sweep's seconds from a rough
    calibration; the cap is min(60 s, 2% of it), and whatever of the cap is left after the minimum
    (setup, 1 + MIN_TIMED_STEPS steps, the evaluations, the search space's cost variants) buys more
    timed steps. With `space`, the searched values that change a step's cost are timed too."""
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
        _timed(lambda: trainer.train(1, _ignore))  # warm-up: first-call allocations
        rounds: list[float] = []

        def step_round() -> None:
            rounds.append(_step_round(trainer))

        step_round()
        evals = _evaluations(trainer, exp, work, between=step_round)
        while len(rounds) < STEP_ROUNDS:
            step_round()
        step_s = statistics.fmean(rounds)
        eval_s, eval_method, warmup_extra_s = full_evaluation(evals, rounds, step_s)
        save_s = _timed(lambda: trainer.save(work / "checkpoint"))
        variants = _variant_step_ratios(exp, dict(space or {}), trainer, work)
        cal = Calibration(device=_device_name(exp), total_steps=trial_step_budget(trainer), imports_s=imports_s,
                          setup_s=setup_s, step_s=step_s, steps_timed=MIN_TIMED_STEPS, round_step_s=rounds,
                          eval_s=eval_s, eval_method=eval_method, first_eval_s=evals.first, save_s=save_s,
                          export_s=0.0, prepare_s=prepare_s, cache_work_s=warmup_extra_s, variants=variants)
        cal.cap_s = min(CAP_SECONDS, CAP_SHARE * estimate(cal))
        _time_more_steps(cal, trainer, left=cal.cap_s - (time.perf_counter() - started - cal.cache_work_s))
        cal.config_step_s = cal.step_s
        cal.step_s *= variant_factor(cal)
        cal.export_s = _timed(lambda: trainer.export(work / "export"))
        cal.calibration_s = time.perf_counter() - started - cal.cache_work_s
    cal.notes += [*phase_notes(exp), step_spread_note(cal), *variant_notes(cal)]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cal.notes.append(f"load average {load:.1f} on {os.cpu_count()} CPU(s) during calibration: the measured "
                     "seconds (and so the prediction) hold for a machine this busy")
    if cal.calibration_s > cal.cap_s:
        cal.notes.append(f"calibration took {cal.calibration_s:.1f} s, over its cap of {cal.cap_s:.1f} s: its "
                         f"minimum (setup {setup_s:.1f} s, {1 + MIN_TIMED_STEPS} steps, the evaluations) costs that "
                         "much here")
    return cal


def _ignore(step: int, metrics: object) -> None:
    """The training callback of calibration steps: their metrics are not reported."""


def _step_round(trainer: Any) -> float:
    """Mean seconds of `STEPS_PER_ROUND` single steps of `trainer`."""
    return statistics.fmean(_timed(lambda: trainer.train(1, _ignore)) for _ in range(STEPS_PER_ROUND))


def _time_more_steps(cal: Calibration, trainer: Any, *, left: float) -> None:
    """Spend what the cap leaves (`left` seconds) on one more round, timed as one batch, if it buys at
    least `MIN_TIMED_STEPS` steps (and the trial has that many)."""
    extra = max(0, min(200, int(left * 0.7 / max(cal.step_s, 1e-6)), cal.total_steps - 1 - MIN_TIMED_STEPS))
    if extra < MIN_TIMED_STEPS:
        return
    batch_s = _timed(lambda: trainer.train(extra, _ignore))
    cal.step_s = (batch_s + cal.steps_timed * cal.step_s) / (extra + cal.steps_timed)
    cal.steps_timed += extra
    cal.round_step_s.append(batch_s / extra)


def _variant_step_ratios(exp: Experiment, space: dict[str, Any], trainer: Any,
                         work: Path) -> list[tuple[dict[str, Any], float]]:
    """(params, s/step with them over this config's s/step) for each searched combination of values that
    change a step's cost (`trainers.surface.cost_variants`). Each is a round of steps on its own trainer,
    between two rounds of this config's (the drift correction of `full_evaluation`)."""
    import gc

    from catsith_sweep.config import apply_params
    from catsith_sweep.trainers import make_trainer
    from catsith_sweep.trainers.surface import cost_variants

    ratios: list[tuple[dict[str, Any], float]] = []
    before = None
    for i, params in enumerate(cost_variants(exp, space)):
        varied = apply_params(exp, params)
        if varied == exp:  # this config's own values: the rounds above measured it
            ratios.append((params, 1.0))
            continue
        before = before if before is not None else _step_round(trainer)
        other = make_trainer(varied, work / f"variant{i}")
        other.setup()
        other.train(1, _ignore)  # warm-up
        own = _step_round(other)
        del other
        gc.collect()
        after = _step_round(trainer)
        ratios.append((params, own / statistics.fmean([before, after])))
        before = after
    return ratios


def variant_factor(cal: Calibration) -> float:
    """The mean of the variants' s/step ratios (1 without variants): the sampler draws each value alike."""
    return statistics.fmean(r for _, r in cal.variants) if cal.variants else 1.0


def variant_notes(cal: Calibration) -> list[str]:
    if not cal.variants:
        return []
    each = ", ".join(f"{' '.join(f'{k} {v}' for k, v in params.items())}: x{ratio:.2f}"
                     for params, ratio in cal.variants)
    return [f"searched values change a step's cost ({each}, each timed against this config's own steps): "
            f"s/step is this config's {cal.config_step_s:.4f} x their mean {variant_factor(cal):.2f} = "
            f"{cal.step_s:.4f}, as the sampler draws each value alike; evaluations are timed on this config only"]


def step_spread(cal: Calibration) -> float:
    """How much the machine's speed moved during the calibration: the standard deviation of the rounds'
    s/step over their mean (0 with fewer than 2 rounds)."""
    rounds = cal.round_step_s
    return statistics.stdev(rounds) / statistics.fmean(rounds) if len(rounds) > 1 else 0.0


def step_spread_note(cal: Calibration) -> str:
    rounds = ", ".join(f"{r:.3f}" for r in cal.round_step_s)
    return (f"s/step moved by {step_spread(cal):.0%} (sd / mean) between the {len(cal.round_step_s)} rounds of "
            f"timed steps ({rounds} s): a machine whose speed drifts like this can take that much longer or "
            "shorter than the expected time; the range below is widened by it")


@dataclass(frozen=True)
class EvalTimings:
    """The calibration's evaluations: a warm-up one, then timed ones, each between two rounds of timed
    steps (`timed[i]` ran between rounds i + 1 and i + 2)."""

    first: float
    timed: tuple[float, ...]
    sampler_steps: tuple[int, ...]
    """Sampler steps of each timed evaluation; empty when they ran at full size (no sampler to scale)."""
    full_steps: int
    """`eval.num_inference_steps` of the sweep's evaluations."""


def _evaluations(trainer: object, exp: Experiment, work: Path, between: Callable[[], None]) -> EvalTimings:
    """Run the calibration's evaluations, `between()` (a round of timed steps) after each but the last."""
    evaluate = trainer.evaluate  # type: ignore[attr-defined]
    full_k = exp.eval.num_inference_steps
    ks = [] if not eval_scales_with_sampler(exp) or full_k <= 5 else [1, min(full_k, 5)]
    # k=5, not 2 or 3: more leverage against timing noise on a busy machine
    exp.eval.num_inference_steps = ks[0] if ks else full_k
    first = _timed(lambda: evaluate(work / "eval0"))
    timed: list[float] = []
    for i, k in enumerate(ks or [full_k]):
        between()
        exp.eval.num_inference_steps = k
        timed.append(_timed(partial(evaluate, work / f"eval{i + 1}")))
    exp.eval.num_inference_steps = full_k
    return EvalTimings(first=first, timed=tuple(timed), sampler_steps=tuple(ks), full_steps=full_k)


def full_evaluation(t: EvalTimings, rounds: list[float], step_s: float) -> tuple[float, str, float]:
    """(seconds of one full evaluation, how it was obtained, one-time cache work in the first one).

    Drift-corrected: each timed evaluation is scaled by the mean s/step over the rounds just before and
    after it against the calibration's mean s/step, so an evaluation timed while the machine ran slow
    counts as what it costs at the mean speed (this VM's speed drifts over seconds: two plans a minute
    apart extrapolated 7.5 s and 11.4 s from uncorrected timings)."""
    at_mean = [seconds * step_s / statistics.fmean(rounds[i + 1:i + 3]) for i, seconds in enumerate(t.timed)]
    warm_up = max(0.0, t.first - t.timed[0])
    if not t.sampler_steps:
        method = f"measured at full size: {t.timed[0]:.2f} s (after a warm-up evaluation), at the mean speed"
        return at_mean[0], method, warm_up
    (k1, k2), (t1, t2) = t.sampler_steps, at_mean
    per_step = max(0.0, (t2 - t1) / (k2 - k1))
    fixed = max(0.0, t1 - per_step * k1)
    method = (f"extrapolated: {t.timed[0]:.2f} s at {k1} sampler step, {t.timed[1]:.2f} s at {k2}; "
              f"at the mean speed {t1:.2f} and {t2:.2f} -> {fixed:.2f} + {per_step:.3f} x {t.full_steps} steps")
    return fixed + per_step * t.full_steps, method, warm_up


def _device_name(exp: Experiment) -> str:
    import torch

    wants_cuda = exp.train.device == "cuda" or (exp.train.device == "auto" and torch.cuda.is_available())
    if wants_cuda:
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu ({exp.train.num_threads or max(1, int(exp.resources.cpu))} thread(s))"
