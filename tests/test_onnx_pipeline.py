"""The ONNX pipeline export (optimum's Stable Diffusion layout) gives the torch pipeline's images when
run through a whole denoising loop in onnxruntime (diffusers' ONNX pipeline, as an ONNX SD runtime)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from catsith_sweep.export import onnx_pipeline
from catsith_sweep.export.onnx_pipeline import (
    COMPONENTS,
    export_onnx_pipeline,
    load_onnx_pipeline,
    unet_session_output,
)
from catsith_sweep.export.onnx_vae import OnnxExportError
from catsith_sweep.models import builtin
from catsith_sweep.models.builtin import build_untrained, to_pipeline
from catsith_sweep.models.student import build_student

PROMPTS = ["a red fighter ship facing up", "a grey asteroid"]


def _parts(level: str | None) -> object:
    torch.manual_seed(0)
    parts = build_untrained(PROMPTS)
    parts.vae.register_to_config(scaling_factor=0.7)  # not SD's 0.18215: the export must fold it in
    if level is not None:
        parts.unet, _ = build_student(parts.unet, level)  # type: ignore[arg-type]
    return parts


@pytest.mark.parametrize("level", [None, "micro"], ids=["teacher", "micro-student"])
def test_onnx_folder_matches_torch_pipeline(tmp_path: Path, level: str | None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # diffusers' ONNX pipeline, the runtime here, takes SD's 4 latent channels only (load_onnx_pipeline):
    # the builtin's layout with 4, as a real SD base has; the 8-channel export is checked below.
    monkeypatch.setitem(builtin.VAE_CONFIG, "latent_channels", 4)
    monkeypatch.setitem(builtin.UNET_CONFIG, "in_channels", 4)
    monkeypatch.setitem(builtin.UNET_CONFIG, "out_channels", 4)
    parts = _parts(level)
    export = export_onnx_pipeline(parts, tmp_path / "catsith-tiny-sd", resolution=64)
    for name in COMPONENTS:
        assert (export.directory / name / "model.onnx").is_file()
    index = json.loads((export.directory / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "OnnxRuntimeModel"]
    factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)  # type: ignore[attr-defined]
    side = 64 // factor
    channels = int(parts.unet.config.in_channels)  # type: ignore[attr-defined]
    latents = torch.randn(len(PROMPTS), channels, side, side, generator=torch.Generator().manual_seed(1))
    common = {"num_inference_steps": 4, "guidance_scale": 4.0, "output_type": "np"}
    torch_images = to_pipeline(parts)(PROMPTS, latents=latents, height=64, width=64,  # type: ignore[arg-type]
                                      **common).images
    onnx_pipe = load_onnx_pipeline(export.directory)
    # diffusers' ONNX pipeline sizes latents as height // 8 whatever the VAE (optimum's reads the factor from
    # vae_decoder/config.json); asking it for 8 * side pixels gives the latent side a 64 px sprite has here.
    onnx_images = onnx_pipe(PROMPTS, latents=latents.numpy(), height=8 * side, width=8 * side, **common).images
    assert onnx_images.shape == torch_images.shape == (2, 64, 64, 4)
    assert np.abs(onnx_images - torch_images).max() < 2e-3
    assert np.abs(torch_images[0] - torch_images[1]).max() > 1e-2  # the prompts do change the images


def test_eight_channel_unet_exports_exactly(tmp_path: Path) -> None:
    parts = _parts(None)
    assert parts.unet.config.in_channels == builtin.LATENT_CHANNELS == 8  # type: ignore[attr-defined]
    export = export_onnx_pipeline(parts, tmp_path / "catsith-tiny-sd", resolution=64)
    g = torch.Generator().manual_seed(2)
    sample = torch.randn(2, 8, 16, 16, generator=g)
    hidden = torch.randn(2, int(parts.tokenizer.model_max_length), 64, generator=g)  # type: ignore[attr-defined]
    with torch.no_grad():
        want = parts.unet(sample, torch.tensor([10.0]), hidden).sample.numpy()  # type: ignore[attr-defined]
    got = unet_session_output(export.directory, sample.numpy(), np.array([10.0], np.float32), hidden.numpy())
    assert got.shape == want.shape == (2, 8, 16, 16)
    assert np.abs(got - want).max() < 1e-3
    # The export checked every graph itself, at a batch size it was not traced at.
    assert set(export.max_abs_diffs) == set(COMPONENTS)
    assert all(0 <= diff < 1e-3 for diff in export.max_abs_diffs.values())


def test_graph_that_drifts_from_torch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A UNet graph that no longer matches its torch module fails the export-time check; no folder."""
    parts = _parts(None)
    export_graph = onnx_pipeline._export_graph

    def export_then_drift(module: Any, args: Any, path: Path, *rest: Any) -> None:
        export_graph(module, args, path, *rest)
        if path.parent.name == "unet":  # torch moves on after the graph was written
            with torch.no_grad():
                parts.unet.conv_out.bias.add_(0.5)  # type: ignore[attr-defined]

    monkeypatch.setattr(onnx_pipeline, "_export_graph", export_then_drift)
    with pytest.raises(OnnxExportError, match=r"model.onnx: onnxruntime differs from torch by .* at batch size 3"):
        export_onnx_pipeline(parts, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    parts = _parts(None)
    parts.unet = None  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        export_onnx_pipeline(parts, target)
    assert (target / "keep.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
