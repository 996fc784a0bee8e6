"""Measured latency: ms per image of the whole sampling loop, teacher and student timed side by side.

Trials share the machine, so an absolute figure moves with whatever else runs. Timing the two models
back to back, in the same process, in alternating order (A B B A A B ...) and taking the median of each
makes their ratio robust to that load: a slow patch of the machine hits both, and an outlier (a GC
pause, another trial's burst) does not move a median. `latency_ratio` (student / teacher) is the
distillation sweep's speed objective.

`interleaved_medians` is the plain timing rule (any callables); `sampling_loop` is what is timed for a
diffusion model: text encoding (prompt and empty prompt), `steps` UNet evaluations with classifier-free
guidance, and the VAE decode, as a sampler runs it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch


def interleaved_medians(runners: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int = 1,
                        clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median milliseconds per call of each runner over `repeats` rounds, after `warmup` untimed rounds.

    Every round calls each runner once; the order alternates between rounds (forward, then reversed),
    so neither runner always goes first, right after the other has warmed or cooled caches."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, but got {repeats}")
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            start = clock()
            runners[name]()
            times[name].append((clock() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


@torch.no_grad()
def sampling_loop(parts: Any, prompt: str, *, steps: int, guidance_scale: float, resolution: int,
                  device: torch.device, seed: int = 0) -> torch.Tensor:
    """One image through the whole sampling loop (the work a sampler does per image, nothing else):
    encode the prompt and the empty prompt, `steps` guided UNet steps, decode. Returns the decoded
    pixels on the CPU (which also waits for an accelerator to finish)."""
    from catsith_sweep.trainers.diffusion import tokenize

    ids = tokenize(parts, [prompt, ""], device)
    embeddings = parts.text_encoder(ids)[0]
    factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    shape = (1, int(parts.unet.config.in_channels), resolution // factor, resolution // factor)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device, parts.unet.dtype)
    scheduler = parts.scheduler
    scheduler.set_timesteps(steps, device=device)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        cond, uncond = parts.unet(model_input, t, embeddings.to(parts.unet.dtype)).sample.chunk(2)
        guided = uncond + guidance_scale * (cond - uncond)
        latents = scheduler.step(guided, t, latents).prev_sample
    image = parts.vae.decode(latents.to(parts.vae.dtype) / parts.vae.config.scaling_factor).sample
    return image.float().cpu()


def measure_latency(teacher: Any, student: Any, *, prompt: str, steps: int, guidance_scale: float,
                    resolution: int, device: torch.device, repeats: int) -> dict[str, float]:
    """`latency_ms`, `teacher_latency_ms` (median ms per image, interleaved) and `latency_ratio`."""
    def runner(parts: Any) -> Callable[[], Any]:
        return lambda: sampling_loop(parts, prompt, steps=steps, guidance_scale=guidance_scale,
                                     resolution=resolution, device=device)

    medians = interleaved_medians({"teacher": runner(teacher), "student": runner(student)}, repeats=repeats)
    return {"latency_ms": medians["student"], "teacher_latency_ms": medians["teacher"],
            "latency_ratio": medians["student"] / medians["teacher"]}
