"""Image-quality metrics for a trial (FID, KID, LPIPS) and the sprite-domain scores.

Every score's name says which extractor made it: `sprite_fid`, `sprite_kid`, `sprite_kid_std`,
`sprite_lpips` from the sprite feature network; `fid`, `kid`, `kid_std`, `lpips` from the official
Inception/AlexNet backend. The two families are not comparable with each other, nor sprite scores
across datasets (each dataset trains its own sprite net).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd

from catsith_sweep.data.pixels import DEFAULT_BACKGROUND, composite_rgba, to_float_images, upscale_nearest
from catsith_sweep.metrics.features import (
    FeatureBackend,
    backend_prefix,
    check_backend,
    inception_lpips,
    make_fid,
    make_kid,
    sprite_lpips,
)
from catsith_sweep.models.sprite_net import SpriteNet, classify

# KID itself is the unbiased MMD over ALL samples (deterministic: sprite sets are small, and subsets only
# add noise, measured +-0.08 at 50). Its std is taken over random subsets of half the smaller set
# (capped at torchmetrics' default 1000): how much KID moves when half the sprites change, an upper bound
# (about sqrt(2) x) on the standard error of the full-set value. 0 would claim a precision it lacks.
DEFAULT_KID_SUBSET_SIZE = 1000


def _check_images(name: str, images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] not in (3, 4):
        raise ValueError(f"{name}: expected (N, 3 or 4, H, W) images, got {tuple(images.shape)}")
    if images.shape[0] < 2:
        raise ValueError(f"{name}: FID/KID need at least 2 images, got {images.shape[0]}")


def _batches(images: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [images[i : i + size] for i in range(0, images.shape[0], size)]


@torch.no_grad()
def compute_image_metrics(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    backend: FeatureBackend = "sprite",
    net: SpriteNet | None = None,
    real_index: Sequence[int] | torch.Tensor | None = None,
    kid_subset_size: int = DEFAULT_KID_SUBSET_SIZE,
    kid_subsets: int = 50,
    seed: int = 0,
    batch_size: int = 128,
) -> dict[str, float]:
    """FID, KID (mean and std over subsets) and LPIPS of `fake` against `real`.

    Images are (N, 4, H, W) RGBA or (N, 3, H, W) RGB, float in [0, 1]; RGBA is composited on the
    background (the sprite net's, black by default). The sets may differ in size and resolution.
    `net` is required for the `sprite` backend (and names the metrics `sprite_*`); `inception` raises
    UserInputError when its packages or weights are unavailable. `seed` fixes KID's random subsets.
    KID is over all samples; `*kid_std` its std over `kid_subsets` subsets of half the smaller set
    (at most `kid_subset_size`): see DEFAULT_KID_SUBSET_SIZE.

    LPIPS is a paired distance; the pairing: with `real_index`, fake[i] is compared with
    real[real_index[i]] (pass the dataset indices whose captions the fakes were generated from, or
    `range(N)` for reconstructions); without it, each fake is compared with its nearest real image in
    pixel space, i.e. "how far is each sample from the closest training sprite".
    """
    backend = check_backend(backend)
    _check_images("real", real)
    _check_images("fake", fake)
    background = net.config.background if (backend == "sprite" and net is not None) else DEFAULT_BACKGROUND
    real_rgb, fake_rgb = composite_rgba(real, background), composite_rgba(fake, background)
    subset = max(2, min(kid_subset_size, min(real_rgb.shape[0], fake_rgb.shape[0]) // 2))
    fid, kid = make_fid(backend, net), make_kid(backend, net, subset_size=subset, subsets=kid_subsets)
    for is_real, images in ((True, real_rgb), (False, fake_rgb)):
        for batch in _batches(images, batch_size):
            fid.update(batch, real=is_real)
            kid.update(batch, real=is_real)
    with torch.random.fork_rng(devices=[]):
        # KID draws its subsets from the global generator; fork so the caller's stream is untouched.
        torch.manual_seed(seed)
        _, kid_std = kid.compute()
    kid_mean = _full_kid(kid)
    paired_real, paired_fake = lpips_pairs(real_rgb, fake_rgb, real_index)
    lpips = _paired_lpips(backend, net, paired_real, paired_fake, batch_size)
    prefix = backend_prefix(backend)
    return {
        # The Frechet distance is >= 0; the matrix square root can leave -1e-6 on identical sets.
        f"{prefix}fid": max(0.0, float(fid.compute())),
        f"{prefix}kid": float(kid_mean),
        f"{prefix}kid_std": float(kid_std),
        f"{prefix}lpips": lpips,
    }


def _full_kid(kid: KernelInceptionDistance) -> float:
    """The unbiased polynomial-kernel MMD over every feature KID holds (its own kernel settings)."""
    from torchmetrics.utilities.data import dim_zero_cat

    real, fake = dim_zero_cat(kid.real_features), dim_zero_cat(kid.fake_features)
    return float(poly_mmd(real, fake, kid.degree, kid.gamma, kid.coef))


def lpips_pairs(
    real: torch.Tensor, fake: torch.Tensor, real_index: Sequence[int] | torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(real partner of each fake, fake), both RGB at one common size (nearest resize).

    With `real_index`, fake[i]'s partner is real[real_index[i]]; without, its nearest real image by
    squared pixel distance (ties: the lower index).
    """
    side = max(real.shape[-1], real.shape[-2], fake.shape[-1], fake.shape[-2])
    real, fake = upscale_nearest(real, side), upscale_nearest(fake, side)
    if real_index is not None:
        index = torch.as_tensor(real_index, dtype=torch.long).cpu()
        if index.shape != (fake.shape[0],):
            raise ValueError(f"real_index must hold one index per fake ({fake.shape[0]}), got {tuple(index.shape)}")
        return real[index.to(real.device)], fake
    flat_real = real.flatten(start_dim=1)
    nearest = torch.cat([
        torch.cdist(chunk.flatten(start_dim=1).to(flat_real), flat_real).argmin(dim=1)
        for chunk in _batches(fake, 64)
    ])
    return real[nearest], fake


def _paired_lpips(
    backend: FeatureBackend, net: SpriteNet | None, a: torch.Tensor, b: torch.Tensor, batch_size: int
) -> float:
    scores = []
    for batch_a, batch_b in zip(_batches(a, batch_size), _batches(b, batch_size), strict=True):
        if backend == "sprite":
            assert net is not None  # make_fid already rejected a missing net
            scores.append(sprite_lpips(net, batch_a, batch_b).cpu())
        else:
            scores.append(inception_lpips(batch_a, batch_b).cpu())
    return float(torch.cat(scores).mean())


def _accuracy(predicted: torch.Tensor, targets: torch.Tensor) -> float:
    mask = targets >= 0
    if not bool(mask.any()):
        return math.nan
    return float((predicted[mask] == targets[mask]).float().mean())


def direction_accuracy(net: SpriteNet, images: torch.Tensor, target_directions: torch.Tensor) -> float:
    """Share of directional sprites the sprite net sees facing their target direction (0..7).

    Targets of -1 (non-directional sprites) are ignored; NaN when no target is directional, as there
    is nothing to score.
    """
    targets = torch.as_tensor(target_directions, dtype=torch.long).cpu()
    return _accuracy(classify(net, images)["direction"], targets)


def kind_accuracy(net: SpriteNet, images: torch.Tensor, target_kinds: torch.Tensor) -> float:
    """Share of sprites the sprite net classifies as their target kind (index in vocab.KIND_LABELS)."""
    targets = torch.as_tensor(target_kinds, dtype=torch.long).cpu()
    return _accuracy(classify(net, images)["kind"], targets)


def palette_distance(real: torch.Tensor, fake: torch.Tensor, *, bits: int = 3) -> float:
    """How far the colours of `fake` sprites are from those of `real` ones, in [0, 1].

    Pixel art is judged by its palette; the sprite network is trained to tell kinds and directions
    apart, not palettes, so its FID weighs colour only indirectly. This is the total-variation
    distance between the two sets' colour histograms: opaque pixels only (alpha >= 0.5), RGB cut to
    `bits` bits per channel. 0 means the same colour distribution, 1 means no colour in common.
    """
    for name, images in (("real", real), ("fake", fake)):
        if images.dim() != 4 or images.shape[1] != 4 or images.shape[0] < 1:
            raise ValueError(f"{name}: palette_distance needs RGBA images (N, 4, H, W), got {tuple(images.shape)}")
    if not 1 <= bits <= 8:
        raise ValueError(f"`1 <= bits <= 8` must hold, but got bits={bits}")
    return float(0.5 * (_colour_histogram(real, bits) - _colour_histogram(fake, bits)).abs().sum())


def _colour_histogram(images: torch.Tensor, bits: int) -> torch.Tensor:
    images = to_float_images(images).detach().cpu()
    levels = 1 << bits
    opaque = images[:, 3] >= 0.5
    rgb = (images[:, :3].clamp(0, 1) * (levels - 1)).round().long()
    codes = (rgb[:, 0] * levels + rgb[:, 1]) * levels + rgb[:, 2]
    counts = torch.bincount(codes[opaque], minlength=levels ** 3).float()
    return counts / counts.sum().clamp(min=1)
