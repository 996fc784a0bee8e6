"""The builtin base's VAE: its sprite loss, its colour augmentation, and the round-trip bench."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from catsith_sweep.models.vae_loss import (
    _grey_axis_rotations,
    opponent_chroma,
    random_square_symmetry,
    recolour,
    sprite_reconstruction_loss,
)

BENCH = Path(__file__).resolve().parents[1] / "bench" / "vae_roundtrip.py"


def _sprites(count: int = 4, size: int = 16) -> torch.Tensor:
    """RGBA in [0, 1]: a random-coloured opaque square on a transparent (RGB 0) background."""
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(count, 4, size, size)
    images[:, :3, 4:12, 4:12] = torch.rand(count, 3, 1, 1, generator=g)
    images[:, 3, 4:12, 4:12] = 1
    return images


def test_loss_is_zero_on_a_perfect_reconstruction_and_grows_with_error() -> None:
    target = _sprites() * 2 - 1
    assert float(sprite_reconstruction_loss(target, target, edge_weight=1.0)) == pytest.approx(0.0)
    small = sprite_reconstruction_loss(target + 0.02, target)
    large = sprite_reconstruction_loss(target + 0.2, target)
    assert 0 < float(small) < float(large)


def test_loss_weighs_opaque_colour_far_above_colour_under_transparency() -> None:
    target = _sprites() * 2 - 1
    opaque = target[:, 3:] > 0
    under_sprite, under_background = target.clone(), target.clone()
    under_sprite[:, :3] += 0.5 * opaque
    under_background[:, :3] += 0.5 * ~opaque
    # the background has 3x the sprite's area here, and still counts far less
    assert float(sprite_reconstruction_loss(under_sprite, target)) > 5 * float(
        sprite_reconstruction_loss(under_background, target))


def test_edge_term_sees_a_blurred_outline_that_the_colour_term_barely_does() -> None:
    target = _sprites() * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(target, 3, stride=1, padding=1)
    plain = float(sprite_reconstruction_loss(blurred, target))
    with_edges = float(sprite_reconstruction_loss(blurred, target, edge_weight=1.0))
    assert with_edges > plain * 1.2


def test_alpha_weight_scales_only_the_alpha_term() -> None:
    target = _sprites() * 2 - 1
    off_alpha, off_colour = target.clone(), target.clone()
    off_alpha[:, 3] = target[:, 3] - 0.2  # every pixel's alpha off by 0.1 in [0, 1]
    off_colour[:, :3] += 0.2 * (target[:, 3:] > 0)
    alpha_error = float(sprite_reconstruction_loss(off_alpha, target))
    assert float(sprite_reconstruction_loss(off_alpha, target, alpha_weight=3.0)) == pytest.approx(3 * alpha_error)
    assert float(sprite_reconstruction_loss(off_colour, target, alpha_weight=3.0)) == pytest.approx(
        float(sprite_reconstruction_loss(off_colour, target)))


def test_opponent_chroma_axes() -> None:
    rgb = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5]])[:, :, None, None]
    chroma = opponent_chroma(rgb)[:, :, 0, 0]
    assert chroma.tolist() == [[1.0, 0.5], [-1.0, 0.5], [0.0, -1.0], [0.0, 0.0]]  # grey has no chroma


def test_chroma_term_prices_a_lost_red_green_axis_above_a_brightness_error() -> None:
    """The v2 VAE's failure: green decoded as yellow. Without the chroma term a brightness error of the
    same RGB L1 costs as much; with it the hue error costs more."""
    target01 = _sprites()
    green, yellow = target01.clone(), target01.clone()
    opaque = target01[:, 3:] > 0
    green[:, :3] = torch.where(opaque, torch.tensor([0.2, 0.8, 0.2])[:, None, None], 0.0)
    yellow[:, :3] = torch.where(opaque, torch.tensor([0.6, 0.8, 0.0])[:, None, None], 0.0)  # L1 0.6 from green
    darker = green.clone()
    darker[:, :3] = torch.where(opaque, green[:, :3] - 0.2, 0.0)  # L1 0.6 from green too
    def loss(recon: torch.Tensor, weight: float) -> float:
        return float(sprite_reconstruction_loss(recon * 2 - 1, green * 2 - 1, chroma_weight=weight))
    assert loss(yellow, 0.0) == pytest.approx(loss(darker, 0.0), rel=1e-5)
    assert loss(yellow, 2.0) > 2 * loss(darker, 2.0)
    assert loss(green, 2.0) == pytest.approx(0.0)


def test_loss_refuses_non_rgba_or_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="N x 4 x H x W"):
        sprite_reconstruction_loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="one shape"):
        sprite_reconstruction_loss(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 4, 4))


def test_a_third_turn_about_the_grey_axis_cycles_the_channels() -> None:
    rotation = _grey_axis_rotations(torch.tensor([2 * math.pi / 3]))[0]
    red = torch.tensor([1.0, 0.0, 0.0])
    assert torch.allclose(rotation @ red, torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    grey = torch.full((3,), 0.4)
    assert torch.allclose(_grey_axis_rotations(torch.tensor([1.234]))[0] @ grey, grey, atol=1e-6)


def test_recolour_changes_colours_only() -> None:
    images = _sprites(count=32)
    out = recolour(images, torch.Generator().manual_seed(1), probability=1.0)
    assert torch.equal(out[:, 3], images[:, 3])
    transparent = (images[:, 3:] == 0).expand(-1, 3, -1, -1)
    assert float(out[:, :3][transparent].abs().max()) == 0.0
    changed = (out[:, :3] - images[:, :3]).abs().amax(dim=(1, 2, 3))
    assert int((changed > 0.05).sum()) >= 28  # nearly every sprite got a new palette
    assert out.min() >= 0 and out.max() <= 1


def test_recolour_share_and_determinism() -> None:
    images = _sprites(count=200)
    assert torch.equal(recolour(images, torch.Generator().manual_seed(2), probability=0.0), images)
    half = recolour(images, torch.Generator().manual_seed(2), probability=0.5)
    untouched = int((half == images).flatten(1).all(dim=1).sum())
    assert 70 <= untouched <= 130
    assert torch.equal(half, recolour(images, torch.Generator().manual_seed(2), probability=0.5))
    with pytest.raises(ValueError, match="probability 1.5"):
        recolour(images, torch.Generator(), probability=1.5)


def test_square_symmetry_keeps_every_pixel() -> None:
    images = torch.rand(2, 4, 8, 8)
    g = torch.Generator().manual_seed(3)
    seen = set()
    for _ in range(20):
        out = random_square_symmetry(images, g)
        assert torch.equal(out.flatten(2).sort(dim=2).values, images.flatten(2).sort(dim=2).values)
        seen.add(out.numpy().tobytes())
    assert len(seen) > 2


def _bench_module():  # noqa: ANN202 - a module loaded from a file
    spec = importlib.util.spec_from_file_location("vae_roundtrip", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["vae_roundtrip"] = module
    spec.loader.exec_module(module)
    return module


def test_roundtrip_errors_count_opaque_colour_and_all_alpha() -> None:
    bench = _bench_module()
    original = _sprites()
    assert bench.roundtrip_errors(original, original) == {"rgb": 0.0, "alpha": 0.0}
    shifted = original.clone()
    shifted[:, :3] = (shifted[:, :3] + 10 / 255) * (original[:, 3:] > 0) + 0.9 * (original[:, 3:] == 0)
    errors = bench.roundtrip_errors(original, shifted.clamp(max=1))
    assert errors["alpha"] == 0.0
    assert 9.0 < errors["rgb"] <= 10.01  # the background's wrong colour is not counted


def test_rendered_sheet_is_soft_edged_and_imports(tmp_path: Path) -> None:
    bench = _bench_module()
    images = bench.rendered_sheet_images(tmp_path)
    assert images.shape == (len(bench.SHEET_FRAME_SIZES) * bench.SHEET_FRAMES, 4, 64, 64)
    alpha = images[:, 3]
    assert bool(((alpha > 0) & (alpha < 1)).any())  # anti-aliased edges, unlike the synth set
    assert float(alpha.mean()) > 0.1


def test_builtin_unet_denoises_the_latent_the_builtin_vae_makes() -> None:
    from catsith_sweep.models.builtin import UNET_CONFIG, VAE_CONFIG, build_untrained

    parts = build_untrained(["a red ship"])
    with torch.no_grad():
        latent = parts.vae.encode(_sprites(count=1, size=VAE_CONFIG["sample_size"]) * 2 - 1).latent_dist.mean
        assert latent.shape[1:] == (UNET_CONFIG["in_channels"], UNET_CONFIG["sample_size"], UNET_CONFIG["sample_size"])
        context = torch.zeros(1, 4, UNET_CONFIG["cross_attention_dim"])
        assert parts.unet(latent, 10, context).sample.shape == latent.shape
