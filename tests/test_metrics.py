"""Image plumbing, the sprite feature network and the image metrics (FID/KID/LPIPS, sprite scores).

One sprite net is trained per module (about 8 s) on the builtin synthetic set and shared; held-out
checks use a second synthetic set drawn with another seed (new proportions and colours per variant).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from catsith_sweep.data import vocab
from catsith_sweep.data.pixels import composite_rgba, upscale_nearest
from catsith_sweep.errors import UserInputError
from catsith_sweep.metrics.images import make_grid_png, save_png_atomic

torch.set_num_threads(1)


class Labelled:
    """The label arrays of a SpriteDataset, or of sprites drawn here when data.synth is absent."""

    def __init__(self, images: torch.Tensor, categories: torch.Tensor, kinds: torch.Tensor,
                 directions: torch.Tensor) -> None:
        self.images, self.categories, self.kinds, self.directions = images, categories, kinds, directions


def _drawn_sprites(seed: int, size: int = 64) -> Labelled:
    """Fallback labelled sprites: one polygon per kind (vertex count, size), a nose showing direction."""
    rng = np.random.default_rng(seed)
    images, cats, kinds, dirs = [], [], [], []
    for k, label in enumerate(vocab.KIND_LABELS):
        category = label.split("/")[0]
        n_dir = vocab.DIRECTIONS_BY_CATEGORY[category]
        colour = tuple(int(c) for c in vocab.BASE_COLORS.get(label, (40 + 15 * k, 200 - 9 * k, 90)))
        for _variant in range(3):
            for d in range(n_dir):
                angle = d * math.pi / 4
                radius = size * (0.2 + 0.03 * (k % 4)) * rng.uniform(0.9, 1.1)
                points = []
                for v in range(3 + k % 5):
                    t = 2 * math.pi * v / (3 + k % 5)
                    r = radius * (1.6 if v == 0 else 1.0)
                    x, y = r * math.sin(t), -r * math.cos(t)
                    points.append((size / 2 + x * math.cos(angle) - y * math.sin(angle),
                                   size / 2 + x * math.sin(angle) + y * math.cos(angle)))
                image = Image.new("RGBA", (size, size))
                ImageDraw.Draw(image).polygon(points, fill=(*colour, 255))
                images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255)
                cats.append(vocab.CATEGORIES.index(category))
                kinds.append(k)
                dirs.append(d if n_dir > 1 else -1)
    return Labelled(torch.stack(images), torch.tensor(cats), torch.tensor(kinds), torch.tensor(dirs))


def _sprite_set(root: Path, seed: int) -> Any:
    try:
        from catsith_sweep.data.dataset import SpriteDataset
        from catsith_sweep.data.synth import synth_dataset
    except ImportError:
        return _drawn_sprites(seed)
    synth_dataset(root, seed=seed, size=64, variants=3)
    return SpriteDataset(root)


@pytest.fixture(scope="module")
def sprites(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _sprite_set(tmp_path_factory.mktemp("synth") / "seed0", seed=0)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _sprite_set(tmp_path_factory.mktemp("synth") / "seed1", seed=1)


@pytest.fixture(scope="module")
def net(sprites: Any) -> Any:
    from catsith_sweep.models.sprite_net import train_sprite_net

    return train_sprite_net(sprites.images, sprites.categories, sprites.kinds, sprites.directions, seed=0)


# --- image plumbing -------------------------------------------------------------------------------

def test_composite_rgba_blends_over_background() -> None:
    rgba = torch.zeros(1, 4, 1, 3)
    rgba[0, :3] = torch.tensor([1.0, 0.5, 0.0]).view(3, 1, 1)
    rgba[0, 3, 0] = torch.tensor([0.0, 0.5, 1.0])
    out = composite_rgba(rgba, (0, 0, 255))
    assert out.shape == (1, 3, 1, 3)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))  # transparent: background
    torch.testing.assert_close(out[0, :, 0, 1], torch.tensor([0.5, 0.25, 0.5]))  # half: the blend
    torch.testing.assert_close(out[0, :, 0, 2], torch.tensor([1.0, 0.5, 0.0]))  # opaque: the sprite
    # Floats are [0, 1] colours, ints 0..255: the same blue either way; uint8 input is scaled.
    torch.testing.assert_close(composite_rgba(rgba, (0.0, 0.0, 1.0)), out)
    torch.testing.assert_close(composite_rgba((rgba * 255).round().byte(), (0, 0, 255)), out, atol=3e-3, rtol=0)
    assert torch.equal(composite_rgba(out), out)  # RGB passes through unchanged
    with pytest.raises(ValueError):
        composite_rgba(rgba, (0, 0, 300))


def test_upscale_nearest_keeps_pixel_values() -> None:
    image = torch.randint(0, 256, (2, 4, 8, 8), dtype=torch.uint8)
    up = upscale_nearest(image, 24)
    assert up.dtype == torch.uint8 and up.shape == (2, 4, 24, 24)
    expected = image.repeat_interleave(3, dim=2).repeat_interleave(3, dim=3)
    assert torch.equal(up, expected)  # every output pixel is an exact copy: no smoothing
    odd = upscale_nearest(image.float() / 255, (13, 20))
    assert set(odd.unique().tolist()) <= set((image.float() / 255).unique().tolist())
    assert torch.equal(upscale_nearest(up, 8), image)  # integer down-scale recovers the original


def test_grid_layout_labels_reference_and_checkerboard(tmp_path: Path) -> None:
    images = torch.zeros(6, 4, 32, 32)  # fully transparent: the checkerboard must show through
    images[:, :, 8:24, 8:24] = 1.0
    reference = torch.ones(2, 4, 32, 32)
    rows = ["pixel art game sprite, fighter vehicle, facing up, green colored", "a bomb"]
    plain = make_grid_png(images, rows=rows, columns=3)
    grid = make_grid_png(images, rows=rows, columns=3, reference=reference)
    assert grid.mode == "RGB" and grid.width > plain.width and grid.height > plain.height
    pixels = np.asarray(plain)
    # Cells are 96 px (32 px sprites upscaled 3x): the white square fills their middle third.
    assert plain.width >= 3 * 96
    greys = {tuple(p) for p in pixels.reshape(-1, 3)}
    assert (204, 204, 204) in greys and (153, 153, 153) in greys and (255, 255, 255) in greys
    path = save_png_atomic(grid, tmp_path / "sub" / "samples.png")
    assert Image.open(path).size == grid.size
    assert sorted(p.name for p in path.parent.iterdir()) == ["samples.png"]  # no temp file left
    with pytest.raises(ValueError, match="rows"):
        make_grid_png(images, rows=rows, columns=2)
    with pytest.raises(ValueError, match="reference"):
        make_grid_png(images, rows=rows, columns=3, reference=reference[:1])
    labelled = make_grid_png(images, rows=rows, columns=3, reference=reference,
                             column_labels=["#1 trial_with_a_name_wider_than_its_cell", "#2", "#3"])
    assert labelled.width == grid.width and labelled.height > grid.height  # a header row per column
    with pytest.raises(ValueError, match="column labels"):
        make_grid_png(images, rows=rows, columns=3, column_labels=["#1"])


# --- sprite feature network -----------------------------------------------------------------------

def test_sprite_net_accuracy_on_heldout_sprites(net: Any, heldout: Any) -> None:
    from catsith_sweep.metrics.scores import direction_accuracy, kind_accuracy
    from catsith_sweep.models.sprite_net import classify

    assert net.config.training["train_kind_accuracy"] > 0.95
    kind = kind_accuracy(net, heldout.images, heldout.kinds)
    direction = direction_accuracy(net, heldout.images, heldout.directions)
    category = float((classify(net, heldout.images)["category"] == heldout.categories).float().mean())
    assert kind > 0.9 and direction > 0.9 and category > 0.95, (kind, direction, category)
    # Non-directional targets are ignored; with none left there is nothing to score.
    assert math.isnan(direction_accuracy(net, heldout.images[:3], torch.full((3,), -1)))


def test_sprite_net_round_trips_without_pickle(net: Any, heldout: Any, tmp_path: Path) -> None:
    from catsith_sweep.models.sprite_net import load_sprite_net, save_sprite_net

    save_sprite_net(net, tmp_path / "net")
    assert sorted(p.name for p in (tmp_path / "net").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "net" / "config.json").read_text())["format"] == "catsith-sprite-net"
    loaded = load_sprite_net(tmp_path / "net")
    x = heldout.images[:8]
    torch.testing.assert_close(loaded.features(loaded.prepare(x)), net.features(net.prepare(x)))
    with pytest.raises(ValueError, match="sprite feature network"):
        load_sprite_net(tmp_path)


def test_feature_extractor_takes_what_torchmetrics_passes(net: Any, heldout: Any) -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance

    from catsith_sweep.models.sprite_net import SpriteFeatureExtractor

    extractor = SpriteFeatureExtractor(net)
    x = heldout.images[:6]
    features = extractor(x)
    assert features.shape == (6, extractor.num_features) and features.dtype == torch.float32
    # uint8 RGBA and float RGB (pre-composited) give the same features as float RGBA.
    torch.testing.assert_close(extractor((x * 255).round().byte()), features, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(extractor(composite_rgba(x)), features)
    fid = FrechetInceptionDistance(feature=extractor, normalize=True, input_img_size=(3, 64, 64))
    fid.train()  # a metric switching modes must not put BatchNorm into batch statistics
    assert not net.training


def test_sprite_net_is_cached_per_dataset_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = pytest.importorskip("catsith_sweep.data.dataset")
    synth = pytest.importorskip("catsith_sweep.data.synth")
    from catsith_sweep.models import sprite_net as module

    root = tmp_path / "data"
    synth.synth_dataset(root, seed=3, size=32, variants=1)
    with torch.no_grad():  # evaluations call it under no_grad: training must still get gradients
        first = module.sprite_net_for_dataset(root, tmp_path / "cache", steps=20)
    entry = tmp_path / "cache" / "sprite_nets" / dataset.fingerprint(root)
    assert (entry / "model.safetensors").is_file()
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".tmp")]

    def must_not_train(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cached sprite net was retrained")

    monkeypatch.setattr(module, "train_sprite_net", must_not_train)
    again = module.sprite_net_for_dataset(root, tmp_path / "cache")
    x = torch.rand(2, 4, 32, 32)
    torch.testing.assert_close(again.features(again.prepare(x)), first.features(first.prepare(x)))


# --- image metrics --------------------------------------------------------------------------------

def test_same_distribution_scores_near_zero_unlike_a_different_set(net: Any, sprites: Any, heldout: Any) -> None:
    from catsith_sweep.metrics.scores import compute_image_metrics

    same = compute_image_metrics(sprites.images, heldout.images, backend="sprite", net=net)
    ships = heldout.categories == 0
    other = compute_image_metrics(sprites.images[sprites.categories == 0], heldout.images[~ships], net=net)
    swapped = compute_image_metrics(sprites.images, heldout.images[:, [2, 1, 0, 3]], net=net)
    assert set(same) == {"sprite_fid", "sprite_kid", "sprite_kid_std", "sprite_lpips"}
    for different in (other, swapped):
        assert same["sprite_fid"] < 0.2 * different["sprite_fid"], (same, different)
        assert abs(same["sprite_kid"]) < 0.2 * different["sprite_kid"], (same, different)


def test_fid_kid_lpips_grow_with_noise(net: Any, sprites: Any) -> None:
    from catsith_sweep.metrics.scores import compute_image_metrics

    real = sprites.images
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(real.shape, generator=gen)
    scores = [
        compute_image_metrics(real, (real + sigma * noise).clamp(0, 1), net=net, real_index=range(len(real)))
        for sigma in (0.0, 0.05, 0.1, 0.2)
    ]
    for key in ("sprite_fid", "sprite_kid", "sprite_lpips"):
        values = [s[key] for s in scores]
        assert all(a < b for a, b in zip(values, values[1:], strict=False)), (key, values)
    assert scores[0]["sprite_fid"] < 1e-3 and scores[0]["sprite_lpips"] == 0.0


def test_lpips_pairing(net: Any, sprites: Any) -> None:
    from catsith_sweep.metrics.features import sprite_lpips
    from catsith_sweep.metrics.scores import compute_image_metrics, lpips_pairs

    x = sprites.images[:10]
    assert torch.equal(sprite_lpips(net, x, x.clone()), torch.zeros(10))
    # Without real_index each fake meets its nearest real sprite: a subset of the real set scores 0.
    assert compute_image_metrics(sprites.images, x, net=net)["sprite_lpips"] == 0.0
    partner, _ = lpips_pairs(sprites.images, x, real_index=list(range(10, 20)))
    assert torch.equal(partner, sprites.images[10:20])
    paired = compute_image_metrics(sprites.images, x, net=net, real_index=range(10, 20))
    assert paired["sprite_lpips"] > 0.0
    with pytest.raises(ValueError, match="real_index"):
        compute_image_metrics(sprites.images, x, net=net, real_index=[0, 1])


def test_backends_are_checked(net: Any, sprites: Any) -> None:
    from catsith_sweep.metrics.features import _importable
    from catsith_sweep.metrics.scores import compute_image_metrics

    x = sprites.images[:4]
    with pytest.raises(UserInputError, match="unknown feature extractor"):
        compute_image_metrics(x, x, backend="clip", net=net)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sprite net"):
        compute_image_metrics(x, x, backend="sprite", net=None)
    if _importable("torchvision") is None and _importable("torch_fidelity") is None:
        pytest.skip("official metrics are installed here")
    with pytest.raises(UserInputError, match="official-metrics"):
        compute_image_metrics(x, x, backend="inception", net=net)


def test_palette_distance(sprites: Any, heldout: Any) -> None:
    from catsith_sweep.metrics.scores import palette_distance

    real = sprites.images
    assert palette_distance(real, real) == 0.0
    same_style = palette_distance(real, heldout.images)
    swapped = palette_distance(real, heldout.images[:, [2, 0, 1, 3]])
    transparent_noise = real.clone()
    transparent_noise[:, :3] = torch.where(real[:, 3:] < 0.5, torch.rand_like(real[:, :3]), real[:, :3])
    assert same_style < 0.35 < swapped <= 1.0, (same_style, swapped)
    assert palette_distance(real, transparent_noise) == 0.0  # only opaque pixels count
    with pytest.raises(ValueError, match=r"`1 <= bits <= 8` must hold, but got bits=9"):
        palette_distance(real, real, bits=9)
    with pytest.raises(ValueError, match="needs RGBA"):
        palette_distance(real[:, :3], real[:, :3])
