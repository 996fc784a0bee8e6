"""KID's std over subsets is measured (not 0 by construction) and the noise floor over eval seeds."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from catsith_sweep.metrics.noise import (
    TIE_FLOORS,
    measure_noise_floor,
    noise_floor,
    noise_floors,
    within_noise,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    from catsith_sweep.models.sprite_net import SpriteNetConfig, train_sprite_net

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(24, 4, 32, 32, generator=gen)
    labels = torch.arange(24) % 3
    return train_sprite_net(images, labels, labels, torch.full((24,), -1), steps=5,
                            config=SpriteNetConfig(widths=(8, 8), feature_dim=16, image_size=32))


def test_kid_is_over_all_samples_and_its_std_over_half_subsets(net: torch.nn.Module) -> None:
    from torchmetrics.image.kid import poly_mmd

    from catsith_sweep.metrics.scores import compute_image_metrics
    from catsith_sweep.models.sprite_net import SpriteFeatureExtractor

    gen = torch.Generator().manual_seed(1)
    real, fake = torch.rand(20, 4, 32, 32, generator=gen), torch.rand(16, 4, 32, 32, generator=gen) * 0.6
    scores = compute_image_metrics(real, fake, net=net, seed=3)
    extract = SpriteFeatureExtractor(net)  # type: ignore[arg-type]
    from catsith_sweep.data.pixels import composite_rgba

    expected = float(poly_mmd(extract(composite_rgba(real)), extract(composite_rgba(fake))))
    assert scores["sprite_kid"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert scores["sprite_kid_std"] > 0  # subsets of 8 of 16: a real spread, not the 0 of one whole-set subset
    again = compute_image_metrics(real, fake, net=net, seed=3)
    assert again["sprite_kid_std"] == scores["sprite_kid_std"]  # seeded subsets


def test_noise_floor_is_the_sample_std_over_seeds() -> None:
    assert noise_floor([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert noise_floor([5.0, 5.0]) == 0.0
    with pytest.raises(ValueError, match="2 or more eval seeds"):
        noise_floor([1.0, math.nan])
    runs = [{"sprite_fid": 6.6, "sprite_kid": 0.10, "only_here": 1.0},
            {"sprite_fid": 6.4, "sprite_kid": 0.12},
            {"sprite_fid": 6.9, "sprite_kid": math.nan}]
    floors = noise_floors(runs)
    assert set(floors) == {"noise_floor_sprite_fid", "noise_floor_sprite_kid"}
    assert floors["noise_floor_sprite_fid"] == pytest.approx(statistics.stdev([6.6, 6.4, 6.9]))
    assert floors["noise_floor_sprite_kid"] == pytest.approx(statistics.stdev([0.10, 0.12]))


def test_measure_noise_floor_calls_each_seed_and_ties() -> None:
    seen = []

    def evaluate(seed: int) -> dict[str, float]:
        seen.append(seed)
        return {"sprite_fid": 10.0 + seed}

    floors = measure_noise_floor(evaluate, [0, 1, 2])
    assert seen == [0, 1, 2] and floors == {"noise_floor_sprite_fid": pytest.approx(1.0)}
    with pytest.raises(ValueError, match="distinct eval seeds"):
        measure_noise_floor(evaluate, [4, 4])
    assert within_noise(6.5, 6.6, 0.1) and not within_noise(6.0, 6.6, 0.1)
    assert within_noise(6.6 - TIE_FLOORS * 0.1, 6.6, 0.1 + 1e-12)
