"""ONNX export of the sprite VAE: CatSith's names and shapes, dynamic batch, verified, atomic."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from catsith_sweep.export import onnx_vae
from catsith_sweep.export.onnx_vae import (
    OnnxExportError,
    check_onnx_against_torch,
    decode_with_onnxruntime,
    export_sprite_vae_onnx,
)
from catsith_sweep.layout import VAE_DECODER_ONNX, VAE_ENCODER_ONNX
from catsith_sweep.models.sprite_vae import SpriteVAE

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vae() -> SpriteVAE:
    torch.manual_seed(0)
    model = SpriteVAE()  # CatSith's shapes: 4 x 64 x 64 in, latent 64
    with torch.no_grad():
        model(torch.rand(8, 4, 64, 64))  # train-mode pass: BatchNorm running stats are no longer 0/1
    return model


def _io(path: Path) -> tuple[dict[str, list[int | str]], dict[str, list[int | str]]]:
    graph = onnx.load(str(path)).graph

    def dims(values: list[onnx.ValueInfoProto]) -> dict[str, list[int | str]]:
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    return dims(list(graph.input)), dims(list(graph.output))


def test_export_writes_catsith_graphs(vae: SpriteVAE, tmp_path: Path) -> None:
    result = export_sprite_vae_onnx(vae, tmp_path)
    assert vae.training  # the caller's mode is restored
    assert result.encoder_path == tmp_path / VAE_ENCODER_ONNX and result.decoder_path == tmp_path / VAE_DECODER_ONNX
    assert result.encoder_max_abs_diff <= 1e-4 and result.decoder_max_abs_diff <= 1e-4
    enc_in, enc_out = _io(result.encoder_path)
    dec_in, dec_out = _io(result.decoder_path)
    assert enc_in == {"image": ["batch", 4, 64, 64]}
    assert enc_out == {"mu": ["batch", 64], "log_var": ["batch", 64]}
    assert dec_in == {"latent": ["batch", 64]}
    # The legacy exporter leaves the decoder's spatial output dims symbolic; the run below pins them.
    assert list(dec_out) == ["image"] and dec_out["image"][:2] == ["batch", 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == [VAE_DECODER_ONNX, VAE_ENCODER_ONNX]  # no temp files

    # Another batch size than the traced one, against the eval-mode model.
    diff = check_onnx_against_torch(vae.decoder, result.decoder_path, torch.randn(5, 64))
    assert diff <= 1e-4
    image = decode_with_onnxruntime(result.decoder_path, np.random.default_rng(0).standard_normal((1, 64)))
    assert image.shape == (1, 4, 64, 64)
    assert image.dtype == np.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_check_raises_when_onnx_and_torch_disagree(vae: SpriteVAE, tmp_path: Path) -> None:
    result = export_sprite_vae_onnx(vae, tmp_path)
    drifted = copy.deepcopy(vae.decoder)
    with torch.no_grad():
        drifted.fc.bias.add_(0.5)  # the torch model no longer matches the exported graph
    with pytest.raises(OnnxExportError, match="differs from torch"):
        check_onnx_against_torch(drifted, result.decoder_path, torch.randn(3, 64))


def test_a_failed_export_writes_nothing(vae: SpriteVAE, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_export = onnx_vae._export

    def export_a_drifted_copy(module: torch.nn.Module, *args: object, **kwargs: object) -> None:
        # Simulates an exporter bug: the graph written is not the module being checked.
        wrong = copy.deepcopy(module)
        with torch.no_grad():
            for param in wrong.parameters():
                param.add_(0.01)
        real_export(wrong, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx_vae, "_export", export_a_drifted_copy)
    with pytest.raises(OnnxExportError):
        export_sprite_vae_onnx(vae, tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither file, nor a temp file
    assert vae.training
