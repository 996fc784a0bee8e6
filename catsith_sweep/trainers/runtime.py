"""What every trainer's loop shares, as plain functions (torchtune's way: no base class with hooks).

`start_runtime` turns the `train` section into threads, a device, an autocast dtype, seeded RNGs and a
GradScaler; `backward` and `optimizer_step` are the two halves of an accumulated, clipped, scaler-aware
optimizer step. A trainer's loop reads:

    for _ in range(accum):
        loss = ...                                    # under autocast(rt)
        check_finite(loss, step)
        backward(rt, loss, accum)
    optimizer_step(rt, opt, params, max_grad_norm=..., scheduler=sched)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from catsith_sweep.config.schema import Experiment
from catsith_sweep.trainers.checkpoint import seed_everything


@dataclass
class Runtime:
    """Where and how a trial computes."""

    device: torch.device
    dtype: torch.dtype
    """Autocast dtype: float32 means no autocast."""
    generator: torch.Generator
    """The CPU generator data order and noise draw from (one state in the checkpoint, same on CUDA)."""
    scaler: torch.amp.GradScaler
    """Loss scaling for float16 on CUDA; disabled (a pass-through) otherwise."""


def resolve_device(choice: str) -> torch.device:
    """`train.device`: `auto` takes CUDA when present; `cuda` without a CUDA device is refused."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is `cuda`, but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def resolve_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """Autocast dtype for `train.mixed_precision`; fp32 on CPU (half precision there is slow or
    unsupported, so it is refused rather than silently ignored)."""
    if device.type != "cuda":
        if mixed_precision in ("fp16", "bf16"):
            raise RuntimeError(f"train.mixed_precision={mixed_precision} needs a CUDA device; use auto or no")
        return torch.float32
    if mixed_precision == "no":
        return torch.float32
    if mixed_precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mixed_precision == "bf16" else torch.float16


def start_runtime(experiment: Experiment) -> Runtime:
    """Set torch's CPU threads (`train.num_threads`, else the trial's CPU share), pick the device and
    precision, and seed torch, numpy and random from `train.seed`."""
    train = experiment.train
    torch.set_num_threads(train.num_threads or max(1, int(experiment.resources.cpu)))
    device = resolve_device(train.device)
    dtype = resolve_dtype(train.mixed_precision, device)
    generator = seed_everything(train.seed)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    return Runtime(device=device, dtype=dtype, generator=generator, scaler=scaler)


def autocast(runtime: Runtime) -> Any:
    """Mixed precision for a forward pass, or nothing in float32."""
    if runtime.dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(runtime.device.type, dtype=runtime.dtype)


def check_finite(loss: torch.Tensor, step: int, parts: dict[str, float] | None = None) -> None:
    """Stop at the step a loss stops being finite (a diverged run), before it reaches the weights."""
    if not torch.isfinite(loss):
        detail = f": {parts}" if parts else ""
        raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}{detail}")


def backward(runtime: Runtime, loss: torch.Tensor, accumulation: int) -> None:
    """Gradients of one micro-batch's share of an accumulated step (scaled for float16)."""
    runtime.scaler.scale(loss / accumulation).backward()


def optimizer_step(runtime: Runtime, optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], *,
                   max_grad_norm: float | None, scheduler: Any = None) -> None:
    """Unscale, clip to `max_grad_norm` (None: no clipping), step, update the scale, zero the
    gradients and advance the schedule."""
    runtime.scaler.unscale_(optimizer)
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(list(params), max_grad_norm)
    runtime.scaler.step(optimizer)
    runtime.scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
