"""Image-quality metrics for a trial (FID, KID, LPIPS) and the sprite-domain scores.

Every score's name says which extractor made it: `sprite_fid`, `sprite_kid`, `sprite_kid_std`,
`sprite_lpips` from the sprite feature network; `fid`, `kid`, `kid_std`, `lpips` from the official
Inception/AlexNet backend. The two families are not comparable with each other, nor sprite scores
across datasets (each dataset trains its own sprite net).
"""

from __future__ import annotations

import math

import torch

from catsith_sweep.metrics.features import (
    FeatureBackend,
    backend_prefix,
    check_backend,
    inception_lpips,
    make_fid,
    make_kid,
    sprite_lpips,
)
from catsith_sweep.metrics.images import DEFAULT_BACKGROUND, composite_rgba
from catsith_sweep.models.sprite_net import SpriteNet, classify

# KID's default subset size; capped by the sample counts (torchmetrics refuses a larger one). With
# the whole set as one subset KID is still unbiased, only its std over subsets becomes 0.
DEFAULT_KID_SUBSET_SIZE = 50


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
    kid_subset_size: int = DEFAULT_KID_SUBSET_SIZE,
    kid_subsets: int = 50,
    seed: int = 0,
    batch_size: int = 128,
) -> dict[str, float]:
    """FID, KID (mean and std over subsets) and LPIPS of `fake` against `real`.

    Images are (N, 4, H, W) RGBA or (N, 3, H, W) RGB, float in [0, 1]; RGBA is composited on the
    background (the sprite net's, black by default). The sets may differ in size. LPIPS is a paired
    distance: it pairs real[i] with fake[i] for the first min(N_real, N_fake) images, so pass
    reconstructions in the order of their targets. `seed` fixes KID's random subsets. `net` is
    required for the `sprite` backend; `inception` raises UserInputError when unavailable.
    """
    backend = check_backend(backend)
    _check_images("real", real)
    _check_images("fake", fake)
    background = net.config.background if (backend == "sprite" and net is not None) else DEFAULT_BACKGROUND
    real_rgb, fake_rgb = composite_rgba(real, background), composite_rgba(fake, background)
    subset = min(kid_subset_size, real_rgb.shape[0], fake_rgb.shape[0])
    fid, kid = make_fid(backend, net), make_kid(backend, net, subset_size=subset, subsets=kid_subsets)
    for is_real, images in ((True, real_rgb), (False, fake_rgb)):
        for batch in _batches(images, batch_size):
            fid.update(batch, real=is_real)
            kid.update(batch, real=is_real)
    with torch.random.fork_rng(devices=[]):
        # KID draws its subsets from the global generator; fork so the caller's stream is untouched.
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    pairs = min(real_rgb.shape[0], fake_rgb.shape[0])
    lpips = _paired_lpips(backend, net, real_rgb[:pairs], fake_rgb[:pairs], batch_size)
    prefix = backend_prefix(backend)
    return {
        f"{prefix}fid": float(fid.compute()),
        f"{prefix}kid": float(kid_mean),
        f"{prefix}kid_std": float(kid_std),
        f"{prefix}lpips": lpips,
    }


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
