"""Sprite pixels as tensors, the conventions every layer shares.

Sprites are RGBA with straight (not premultiplied) alpha, as PNG stores them, in float [0, 1] with
shape (N, 4, H, W) (uint8 0..255 is accepted and converted). Pixel art must never be smoothed: every
resize here is nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# CatSith draws exospace sprites over a black star field, so compositing on black measures what a
# player sees: a transparent pixel and an opaque black one look the same in the game, and do here.
DEFAULT_BACKGROUND: tuple[int, int, int] = (0, 0, 0)


def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """Return images as float32 in [0, 1]: uint8 is divided by 255, floats are only cast."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float()


def background_unit(background: Sequence[int | float]) -> tuple[float, float, float]:
    """An (r, g, b) colour as floats in [0, 1].

    Two conventions live in this code base, told apart by type: ints are 0..255 (like the base colours
    of `data.vocab`), floats are already in [0, 1] (like `trainers.diffusion.RGB_BACKGROUND`).
    """
    if len(background) != 3:
        raise ValueError(f"background must be (r, g, b), got {tuple(background)}")
    if all(isinstance(c, int) for c in background):
        unit = tuple(float(c) / 255.0 for c in background)
    else:
        unit = tuple(float(c) for c in background)
    if not all(0.0 <= c <= 1.0 for c in unit):
        raise ValueError(f"background {tuple(background)} is out of range (ints 0..255 or floats 0..1)")
    return unit[0], unit[1], unit[2]


def composite_rgba(
    images: torch.Tensor, background: Sequence[int | float] = DEFAULT_BACKGROUND
) -> torch.Tensor:
    """Composite straight-alpha RGBA images (N, 4, H, W) over a solid colour, giving (N, 3, H, W).

    `background` is (r, g, b): ints in 0..255 or floats in [0, 1] (see `background_unit`); the default
    is black (see DEFAULT_BACKGROUND). uint8 input is accepted; the result is float32 in [0, 1].
    Three-channel input is returned as float unchanged, so callers can pass either form.
    """
    if images.dim() != 4 or images.shape[1] not in (3, 4):
        raise ValueError(f"expected images of shape (N, 3 or 4, H, W), got {tuple(images.shape)}")
    images = to_float_images(images)
    if images.shape[1] == 3:
        return images
    rgb, alpha = images[:, :3], images[:, 3:4].clamp(0.0, 1.0)
    bg = torch.tensor(background_unit(background), dtype=images.dtype, device=images.device)
    return rgb * alpha + bg.view(1, 3, 1, 1) * (1.0 - alpha)


def _nearest_indices(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    # Centre-aligned nearest ("nearest-exact", PIL's NEAREST): integer factors repeat each pixel
    # exactly, and non-integer factors do not drift by half a pixel as torch's legacy "nearest" does.
    idx = ((torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * n_in / n_out).floor()
    return idx.long().clamp_(0, n_in - 1)


def upscale_nearest(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize (N, C, H, W) or (C, H, W) images to `size` (square int or (h, w)) by nearest neighbour.

    Implemented as an index gather, so every output pixel is an exact copy of an input pixel and the
    dtype is kept (uint8 stays uint8): pixel art keeps its palette. Downscaling works the same way.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    rows = _nearest_indices(images.shape[-2], out_h, images.device)
    cols = _nearest_indices(images.shape[-1], out_w, images.device)
    return images.index_select(-2, rows).index_select(-1, cols)


# Fixed background for compositing RGBA sprites when a base only takes RGB (standard SD bases).
RGB_BACKGROUND = (0.0, 0.0, 0.0)


def to_vae_pixels(images: torch.Tensor, rgba: bool) -> torch.Tensor:
    """RGBA in [0, 1] -> the VAE's input in [-1, 1]: RGBA as is, or RGB composited on a fixed background."""
    if not rgba:
        alpha = images[:, 3:4]
        background = torch.tensor(RGB_BACKGROUND, device=images.device).view(1, 3, 1, 1)
        images = images[:, :3] * alpha + background * (1 - alpha)
    return images * 2 - 1


def from_vae_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """The VAE's output in [-1, 1] -> RGBA in [0, 1] (alpha 1 for an RGB VAE)."""
    images = ((pixels + 1) / 2).clamp(0, 1)
    if images.shape[1] == 3:
        images = torch.cat([images, torch.ones_like(images[:, :1])], dim=1)
    return images
