"""Plain functions shared by the diffusion trainers (full, LoRA, distillation): pixel preparation,
caption tokens, the noise-prediction loss, the learning-rate schedule, sampling and the sample grid.
(Device, precision and the optimizer step are in `trainers.runtime`.)"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from catsith_sweep.data.pixels import RGB_BACKGROUND, from_vae_pixels, to_vae_pixels
from catsith_sweep.models.builtin import DiffusionParts, to_pipeline

__all__ = ["RGB_BACKGROUND", "from_vae_pixels", "to_vae_pixels"]  # the pixel convention lives in data.pixels



def tokenize(parts: DiffusionParts, captions: list[str], device: torch.device) -> torch.Tensor:
    ids = parts.tokenizer(captions, padding="max_length", truncation=True,
                          max_length=parts.tokenizer.model_max_length, return_tensors="pt").input_ids
    return ids.to(device)


CAPTIONS_OVER_LIMIT_PARAM = "captions.over_token_limit"
# diffusers' SD pipeline warns on every call whose prompts are cut, and transformers once per tokenizer
# when it measures them; one run param says it once instead.
_TRUNCATION_LOGGERS = ("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion",
                       "transformers.tokenization_utils_base")


def caption_overflow_params(tokenizer: Any, captions: Sequence[str]) -> dict[str, str]:
    """{`captions.over_token_limit`: "N of M (limit L tokens, longest K)"} when some captions are longer
    than the text encoder's context (training and sampling cut their tails); {} when none is."""
    limit = int(tokenizer.model_max_length)
    lengths = [len(ids) for ids in tokenizer(list(captions), verbose=False).input_ids]
    over = sum(n > limit for n in lengths)
    if not over:
        return {}
    return {CAPTIONS_OVER_LIMIT_PARAM: f"{over} of {len(lengths)} (limit {limit} tokens, longest {max(lengths)})"}


@contextlib.contextmanager
def _quiet_prompt_truncation() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _TRUNCATION_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def embed(parts: DiffusionParts, captions: list[str], device: torch.device) -> torch.Tensor:
    """The text encoder's hidden states for `captions` (what the UNet cross-attends to)."""
    return parts.text_encoder(tokenize(parts, captions, device))[0]


@torch.no_grad()
def build_latent_cache(parts: DiffusionParts, images: torch.Tensor, captions: list[str],
                       device: torch.device) -> dict[str, torch.Tensor]:
    """Latent distributions (mean, std, scaled) and caption embeddings of a training set, computed once
    when the VAE and text encoder are frozen and no augmentation changes the pixels (kohya's
    cache_latents); row i is `images[i]`, plus the empty caption for caption dropout."""
    vae = parts.vae
    dists = [vae.encode(to_vae_pixels(images[s:s + 64], parts.rgba).to(device, vae.dtype)).latent_dist
             for s in range(0, len(images), 64)]
    scale = vae.config.scaling_factor
    embeddings = embed(parts, [*captions, ""], device)
    return {"mean": torch.cat([d.mean for d in dists]) * scale, "std": torch.cat([d.std for d in dists]) * scale,
            "emb": embeddings[:-1], "empty": embeddings[-1:]}


def cached_batch(cache: dict[str, torch.Tensor], rows: torch.Tensor, drop: torch.Tensor,
                 generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents sampled from the cached distributions of `rows`, and their caption embeddings (the empty
    caption where `drop`): the same draws from `generator` whatever the device."""
    noise = torch.randn(cache["mean"][rows].shape, generator=generator).to(device)
    latents = cache["mean"][rows] + cache["std"][rows] * noise
    emb = torch.where(drop.view(-1, 1, 1).to(device), cache["empty"], cache["emb"][rows])
    return latents, emb


def diffusion_loss(unet: Any, scheduler: Any, latents: torch.Tensor, embeddings: torch.Tensor, *,
                   noise_offset: float = 0.0, min_snr_gamma: float | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise-prediction (epsilon) MSE at random timesteps, with optional noise offset and Min-SNR
    weighting (Hang et al. 2023)."""
    batch = latents.shape[0]
    # Draw on the generator's device (the trainers' generator lives on the CPU, so a CUDA run draws the
    # same numbers as a CPU run and its checkpoints hold one RNG state), then move to the latents.
    where = generator.device if generator is not None else latents.device
    noise = torch.randn(latents.shape, generator=generator, device=where).to(latents.device, latents.dtype)
    if noise_offset:
        offset = torch.randn((batch, latents.shape[1], 1, 1), generator=generator, device=where)
        noise = noise + noise_offset * offset.to(latents.device, latents.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator,
                              device=where).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, embeddings).sample
    per_item = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma:
        alphas = scheduler.alphas_cumprod.to(latents.device)[timesteps]
        snr = alphas / (1 - alphas)
        per_item = per_item * torch.clamp(snr, max=min_snr_gamma) / snr
    return per_item.mean()


def lr_lambda(schedule: str, warmup: int, total: int):
    """Multiplier of the learning rate at each step: linear warm-up, then constant, cosine, or
    `cosine_restarts` (see `restart_cycles`)."""
    cycles = {"cosine": [(0, total - warmup, 1.0)],
              "cosine_restarts": restart_cycles(total - warmup)}.get(schedule, [])

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return _cosine_factor(step - warmup, cycles) if cycles else 1.0

    return factor


RESTART_PEAK = 0.5
"""Peak of every cycle after the first, relative to the learning rate."""


def restart_cycles(total: int) -> list[tuple[int, int, float]]:
    """(start, length, peak) of the warm-restarted cosine: half the steps in a first cycle at the full
    rate, then two cycles of a quarter each at `RESTART_PEAK`: probe p5's schedule (bench/README), which
    reached 15.6/255 on held-out sprites in 1200 VAE steps against the built base's 22.5 with one cosine.
    Not reproduced since: run as today's VAE phase it reached 31.8 after 900 steps (bench/README)."""
    first = total // 2
    second = (total - first) // 2
    return [(0, first, 1.0), (first, second, RESTART_PEAK), (first + second, total - first - second, RESTART_PEAK)]


def _cosine_factor(step: int, cycles: list[tuple[int, int, float]]) -> float:
    """The cosine of the cycle `step` falls in, from that cycle's peak to 0 (held at 0 past the last)."""
    for start, length, peak in reversed(cycles):
        if step >= start:
            progress = (step - start) / max(1, length)
            return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


@torch.no_grad()
def generate(parts: DiffusionParts, prompts: list[str], seeds: list[int], *, steps: int,
             guidance_scale: float, device: torch.device) -> torch.Tensor:
    """RGBA images in [0, 1], one per (prompt, seed) pair, prompt-major. Fixed seeds per image, so the
    same prompts and seeds give comparable grids across trials."""
    pipe = to_pipeline(parts)
    pipe.set_progress_bar_config(disable=True)
    pairs = [(p, s) for p in prompts for s in seeds]
    generators = [torch.Generator(device="cpu").manual_seed(s) for _, s in pairs]
    images = []
    for start in range(0, len(pairs), 32):
        chunk = pairs[start:start + 32]
        with _quiet_prompt_truncation():  # cut prompts are counted once (caption_overflow_params)
            result = pipe([p for p, _ in chunk], generator=generators[start:start + 32],
                          num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent")
        latents = result.images / parts.vae.config.scaling_factor
        images.append(from_vae_pixels(parts.vae.decode(latents.to(parts.vae.dtype)).sample.float()))
    return torch.cat(images).cpu()


def save_sample_grid(images: torch.Tensor, rows: list[str], columns: int, path: Path, *,
                     reference: torch.Tensor | None = None) -> Path:
    """A labelled grid PNG: one row per prompt, `columns` seeds, optional ground-truth column first."""
    from catsith_sweep.metrics.images import make_grid_png, save_png_atomic

    grid = make_grid_png(images, rows=rows, columns=columns, reference=reference)
    save_png_atomic(grid, path)
    return path
