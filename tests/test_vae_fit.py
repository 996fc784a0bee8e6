"""`dataset fit`: the VAE round-trip errors, the verdict, the PNG, on a known-answer VAE and a tiny base."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from catsith_sweep.cli import main
from catsith_sweep.metrics.vae_fit import (
    GOOD_RGB_ERROR,
    USABLE_RGB_ERROR,
    VaeFit,
    spread_indices,
    vae_fit,
)

torch.set_num_threads(1)


class ShiftVae(torch.nn.Module):
    """A VAE-shaped known answer: the identity, plus `shift`/255 on red and `alpha_shift`/255 on alpha.
    Its down-sampling (8) makes the 12 px sprites below need padding."""

    def __init__(self, shift: float, alpha_shift: float = 0.0) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(in_channels=4, block_out_channels=[8, 8, 8, 8])
        self.shift, self.alpha_shift = shift, alpha_shift

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        assert x.shape[-1] % 8 == 0 and x.shape[-2] % 8 == 0
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

    def decode(self, z: torch.Tensor) -> SimpleNamespace:
        delta = torch.tensor([self.shift, 0, 0, self.alpha_shift]).view(1, 4, 1, 1) / 255 * 2
        return SimpleNamespace(sample=z + delta)


def _sprites(n: int = 5, side: int = 12) -> torch.Tensor:
    images = torch.rand(n, 4, side, side, generator=torch.Generator().manual_seed(0)) * 0.8
    images[:, 3] = (images[:, 3] > 0.3).float()
    return images


def test_known_errors_are_measured_on_opaque_pixels() -> None:
    images = _sprites()
    fit = vae_fit(ShiftVae(10.0, alpha_shift=0.0), images)
    assert fit.channel_error[0] == pytest.approx(10.0, abs=1e-3)
    assert fit.channel_error[1:] == pytest.approx((0.0, 0.0), abs=1e-4)
    assert fit.rgb_error == pytest.approx(10 / 3, abs=1e-3) and fit.level == "good"
    assert fit.opaque_pixels == int((images[:, 3] >= 0.5).sum())
    assert fit.reconstructions.shape == images.shape  # padding cropped back
    # Alpha: opaque pixels are already 1 (clamped), so a +30 shift moves only the transparent ones.
    shifted = vae_fit(ShiftVae(0.0, alpha_shift=30.0), images)
    transparent = float((images[:, 3] < 0.5).float().mean())
    assert shifted.alpha_error == pytest.approx(30.0 * transparent, rel=1e-3)
    assert "vae_fit_alpha_error" in shifted.metrics()
    assert shifted.metrics()["vae_fit_r_error"] == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize(("rgb", "alpha", "level", "words"), [
    (GOOD_RGB_ERROR, 1.0, "good", "a UNet LoRA can reach"),
    (GOOD_RGB_ERROR + 0.1, 1.0, "usable", "a UNet LoRA can reach"),
    (USABLE_RGB_ERROR + 0.1, 1.0, "poor", "train the VAE"),
    (5.0, 4.5, "poor", "train the VAE"),
])
def test_verdict_thresholds(rgb: float, alpha: float, level: str, words: str) -> None:
    fit = VaeFit(images=1, opaque_pixels=1, channel_error=(rgb, rgb, rgb), alpha_error=alpha,
                 reconstructions=torch.zeros(1, 4, 8, 8))
    assert fit.level == level and words in fit.verdict()


def test_spread_indices() -> None:
    assert spread_indices(10, 64) == list(range(10))
    assert spread_indices(100, 4) == [0, 25, 50, 75]


def test_dataset_fit_cli_on_a_tiny_base(tiny_base: Path, catsith_cache: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = next((catsith_cache / "synth").glob("seed0-v1-64px"))  # the set the tiny base was built on
    png = tmp_path / "fit.png"
    assert main(["dataset", "fit", str(data), "--base", str(tiny_base), "--png", str(png), "--limit", "16"]) == 0
    text = capsys.readouterr().out
    assert "colour error" in text and "verdict:" in text and str(png) in text
    # 40 steps of base build: far from a faithful VAE, so the honest verdict is "does not fit".
    assert "does not fit" in text and "train the VAE" in text
    image = Image.open(png)
    assert image.mode == "RGB" and image.width > 8 * 64 and image.height > 6 * 64  # 2 groups x 3 rows


def test_dataset_fit_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dataset", "fit", str(tmp_path), "--base", str(tmp_path), "--png", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "metadata.json" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
