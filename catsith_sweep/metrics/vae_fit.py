"""How well a base's VAE reproduces a set of sprites: the ceiling of every UNet LoRA on that base.

A LoRA on the UNet only changes which latents get generated; every sprite is then decoded by the
base's frozen VAE. If encode -> decode of the user's own sprites already loses their colours, no LoRA
can get them back, and the VAE (trainer `vae`) or the whole model (trainer `full`) must be trained.

Measured on the sprites as they are (no diffusion): the latent MEAN is decoded (no sampling noise),
colour error is the mean absolute difference per RGB channel over the ORIGINAL's opaque pixels
(alpha >= 0.5), alpha error the mean absolute alpha difference over all pixels, both in /255 units.
Thresholds (the base goals of issue 11): a colour error of at most GOOD_RGB_ERROR (12/255, the goal on
styles a base was built on) fits closely; at most USABLE_RGB_ERROR (20/255, the goal on styles it never
saw) is still reachable by a LoRA; alpha must stay within MAX_ALPHA_ERROR (4/255) for either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

GOOD_RGB_ERROR = 12.0
"""Colour error (/255) up to which the VAE reproduces the sprites closely."""
USABLE_RGB_ERROR = 20.0
"""Colour error (/255) up to which a UNet LoRA can still reach the look (fine detail softens)."""
MAX_ALPHA_ERROR = 4.0
"""Alpha error (/255) above which outlines and silhouettes break, whatever the colours."""
OPAQUE = 0.5


@dataclass(frozen=True)
class VaeFit:
    """Round-trip errors of a VAE on some sprites, in /255 units, and the reconstructions."""

    images: int
    opaque_pixels: int
    channel_error: tuple[float, float, float]
    """Mean |reconstruction - original| per R, G, B channel over the originals' opaque pixels."""
    alpha_error: float | None
    """Mean |alpha difference| over all pixels; None for an RGB VAE (it has no alpha to compare)."""
    reconstructions: torch.Tensor
    """(N, 4, H, W) RGBA in [0, 1] (alpha 1 from an RGB VAE)."""

    @property
    def rgb_error(self) -> float:
        return sum(self.channel_error) / 3

    @property
    def level(self) -> str:
        """"good", "usable" or "poor" by the module's thresholds."""
        alpha_ok = self.alpha_error is None or self.alpha_error <= MAX_ALPHA_ERROR
        if alpha_ok and self.rgb_error <= GOOD_RGB_ERROR:
            return "good"
        if alpha_ok and self.rgb_error <= USABLE_RGB_ERROR:
            return "usable"
        return "poor"

    def verdict(self) -> str:
        """A plain sentence: can a UNet LoRA on this base reach these sprites' look?"""
        alpha = "" if self.alpha_error is None else f", alpha {self.alpha_error:.1f}/255"
        measured = (f"the base's VAE alone (encode -> decode) is off by {self.rgb_error:.1f}/255 per colour "
                    f"channel{alpha}")
        if self.level == "good":
            return (f"fits: {measured}, within {GOOD_RGB_ERROR:g}/255 (alpha {MAX_ALPHA_ERROR:g}); "
                    "a UNet LoRA can reach this look.")
        if self.level == "usable":
            return (f"fits roughly: {measured}, within {USABLE_RGB_ERROR:g}/255 (alpha {MAX_ALPHA_ERROR:g}); "
                    "a UNet LoRA can reach this look, but fine detail and exact colours will soften.")
        return (f"does not fit: {measured}, over the {USABLE_RGB_ERROR:g}/255 (alpha {MAX_ALPHA_ERROR:g}/255) "
                "a LoRA needs; no UNet LoRA can get closer than this VAE decodes: train the VAE "
                "(trainer: vae) or the full model (trainer: full) on these sprites.")

    def metrics(self, prefix: str = "vae_fit_") -> dict[str, float]:
        """The numbers for a tracker or a bench table."""
        out = {f"{prefix}rgb_error": self.rgb_error}
        out.update({f"{prefix}{c}_error": e for c, e in zip("rgb", self.channel_error, strict=True)})
        if self.alpha_error is not None:
            out[f"{prefix}alpha_error"] = self.alpha_error
        return out


def _downsampling(vae: Any) -> int:
    return 2 ** max(0, len(vae.config.block_out_channels) - 1)


@torch.no_grad()
def reconstruct(vae: Any, images: torch.Tensor, *, batch_size: int = 32) -> torch.Tensor:
    """encode -> decode (latent mean) of RGBA sprites (N, 4, H, W) in [0, 1]; RGBA out, same size.

    Sprites whose side is not a multiple of the VAE's down-sampling are padded with transparent
    pixels (centred) and cropped back, so no pixel is resampled.
    """
    # The trainers' pixel convention (RGB VAEs see sprites composited on their background).
    from catsith_sweep.data.pixels import from_vae_pixels, to_vae_pixels

    rgba = int(vae.config.in_channels) == 4
    factor = _downsampling(vae)
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % factor, -width % factor
    pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    was_training = vae.training
    vae.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        batch = F.pad(images[start:start + batch_size].float(), pads)
        pixels = to_vae_pixels(batch, rgba).to(device, dtype)
        decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample.float().cpu()
        out.append(from_vae_pixels(decoded)[..., pads[2]:pads[2] + height, pads[0]:pads[0] + width])
    vae.train(was_training)
    return torch.cat(out)


def vae_fit(vae: Any, images: torch.Tensor, *, batch_size: int = 32) -> VaeFit:
    """Round-trip `images` (N, 4, H, W) RGBA in [0, 1] through `vae` (a diffusers AutoencoderKL, RGBA
    like the builtin base's or RGB) and measure the errors (module docstring)."""
    if images.dim() != 4 or images.shape[1] != 4 or images.shape[0] < 1:
        raise ValueError(f"vae_fit needs RGBA sprites (N, 4, H, W), got {tuple(images.shape)}")
    images = images.float().cpu()
    recon = reconstruct(vae, images, batch_size=batch_size)
    opaque = images[:, 3] >= OPAQUE
    count = int(opaque.sum())
    diff = (recon[:, :3] - images[:, :3]).abs() * 255
    channel = tuple(float(diff[:, c][opaque].mean()) if count else 0.0 for c in range(3))
    rgba = int(vae.config.in_channels) == 4
    alpha = float((recon[:, 3] - images[:, 3]).abs().mean() * 255) if rgba else None
    return VaeFit(images=images.shape[0], opaque_pixels=count,
                  channel_error=(channel[0], channel[1], channel[2]), alpha_error=alpha, reconstructions=recon)


def save_fit_png(fit: VaeFit, originals: torch.Tensor, path: str | Path, *, columns: int = 8,
                 max_images: int = 16) -> Path:
    """Side-by-side PNG, atomically: per group of `columns` sprites a row of originals, a row of their
    reconstructions and a row of the colour error (|difference| x 4, white = large) on opaque pixels."""
    from catsith_sweep.metrics.images import make_grid_png, save_png_atomic

    count = min(max_images, originals.shape[0])
    columns = min(columns, count)
    count -= count % columns
    originals, recon = originals[:count].float().cpu(), fit.reconstructions[:count]
    error = ((recon[:, :3] - originals[:, :3]).abs().mean(dim=1, keepdim=True) * 4).clamp(0, 1)
    error_rgba = torch.cat([error.expand(-1, 3, -1, -1), (originals[:, 3:] >= OPAQUE).float()], dim=1)
    images, rows = [], []
    for start in range(0, count, columns):
        part = slice(start, start + columns)
        images += [originals[part], recon[part], error_rgba[part]]
        rows += [f"originals {start + 1}-{start + columns}",
                 f"VAE encode -> decode (colour error {fit.rgb_error:.1f}/255 over all {fit.images})",
                 "|error| x 4 on opaque pixels"]
    grid = make_grid_png(torch.cat(images), rows=rows, columns=columns)
    return save_png_atomic(grid, path)


def spread_indices(total: int, limit: int) -> list[int]:
    """Up to `limit` indices spread evenly over 0..total-1 (every kind of a dataset gets measured)."""
    count = min(total, limit)
    return [int(i * total / count) for i in range(count)]


def fit_dataset(root: Path, *, base: str, png: Path, limit: int = 64, cache_dir: Path | None = None,
                log: Any = print) -> VaeFit:
    """`dataset fit`: measure `base`'s VAE on up to `limit` sprites of the dataset at `root`, write the
    side-by-side PNG and log the numbers and the verdict. UserInputError for a bad dataset or base."""
    from catsith_sweep.data.dataset import SpriteDataset
    from catsith_sweep.errors import UserInputError
    from catsith_sweep.models.base_source import load_base

    if limit < 1:
        raise UserInputError(f"--limit {limit}: expected at least 1 sprite")
    dataset = SpriteDataset(root)
    vae = load_base(base, cache_dir).vae
    picks = spread_indices(len(dataset), limit)
    originals = dataset.images[picks]
    fit = vae_fit(vae, originals)
    save_fit_png(fit, originals, png)
    red, green, blue = fit.channel_error
    alpha = "n/a (RGB VAE: sprites composited on black)" if fit.alpha_error is None else f"{fit.alpha_error:.1f}/255"
    log(f"{base} VAE on {fit.images} sprites of {root} ({fit.opaque_pixels} opaque pixels):")
    log(f"  colour error {fit.rgb_error:.1f}/255 (R {red:.1f}, G {green:.1f}, B {blue:.1f}), alpha error {alpha}")
    log(f"  verdict: {fit.verdict()}")
    log(f"  side by side: {png}")
    return fit
