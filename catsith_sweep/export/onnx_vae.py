"""Export a SpriteVAE to the two ONNX files CatSith's inference engine runs (catsith-formats.md §4).

`sprite_vae_encoder.onnx`: input `image` (N x 4 x S x S, RGBA in [0, 1]) -> outputs `mu`, `log_var`
(N x latent_dim). `sprite_vae_decoder.onnx`: input `latent` (N x latent_dim) -> output `image`
(N x 4 x S x S in [0, 1]). The batch axis is dynamic.

Uses the legacy TorchScript exporter (`dynamo=False`, opset 17): the dynamo exporter needs onnxscript,
which is not a dependency (field notes, "ONNX"). Every file is verified with onnxruntime at a batch size
other than the traced one, because a wrongly traced reshape typically shows only there; a difference
beyond the tolerance is an OnnxExportError and no file is left in place.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn

from catsith_sweep.io import atomic_path
from catsith_sweep.layout import VAE_DECODER_ONNX, VAE_ENCODER_ONNX
from catsith_sweep.models.sprite_vae import SpriteVAE

OPSET_VERSION = 17
DEFAULT_TOLERANCE = 1e-4
TRACE_BATCH = 2  # traced at 2, checked at CHECK_BATCH: a batch size baked into the graph fails the check
CHECK_BATCH = 3


class OnnxExportError(RuntimeError):
    """An exported graph disagrees with the torch model (or could not be exported)."""


@dataclass(frozen=True)
class OnnxVaeExport:
    """Paths of the exported files and their verified max abs difference from torch."""

    encoder_path: Path
    decoder_path: Path
    encoder_max_abs_diff: float
    decoder_max_abs_diff: float


def _export(
    module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_names: list[str]
) -> None:
    dynamic_axes = {name: {0: "batch"} for name in [input_name, *output_names]}
    with warnings.catch_warnings():
        # The legacy exporter announces its deprecation on every call; the choice is deliberate.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET_VERSION,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


@torch.no_grad()
def check_onnx_against_torch(
    module: nn.Module,
    onnx_path: str | Path,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> float:
    """Max abs difference over all outputs between onnxruntime (CPU) and `module` on `inputs`.

    `inputs`: one tensor, or one per graph input in the graph's input order (`module(*inputs)` in
    torch). Raises OnnxExportError when the difference exceeds `tolerance` (or is NaN) or the input or
    output counts differ. The module is evaluated in eval mode (its previous mode is restored); outputs
    are matched by position. Use a batch size different from the traced one: a batch size baked into
    the graph shows only there.
    """
    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [graph_input.name for graph_input in session.get_inputs()]
    if len(names) != len(args):
        raise OnnxExportError(f"{onnx_path}: the graph takes {len(names)} inputs {names}, got {len(args)}")
    feed = {name: (a.float() if a.is_floating_point() else a).detach().cpu().numpy()
            for name, a in zip(names, args, strict=True)}
    ort_outputs = session.run(None, feed)
    was_training = module.training
    module.eval()
    try:
        device = next(module.parameters()).device
        torch_out = module(*(a.to(device) for a in args))
    finally:
        module.train(was_training)
    torch_outputs = list(torch_out) if isinstance(torch_out, tuple | list) else [torch_out]
    if len(torch_outputs) != len(ort_outputs):
        raise OnnxExportError(f"{onnx_path}: {len(ort_outputs)} ONNX outputs vs {len(torch_outputs)} in torch")
    diff = max(
        float(np.max(np.abs(o - t.detach().float().cpu().numpy()))) if o.size else 0.0
        for o, t in zip(ort_outputs, torch_outputs, strict=True)
    )
    if not diff <= tolerance:  # also catches NaN
        raise OnnxExportError(
            f"{Path(onnx_path).name}: onnxruntime differs from torch by {diff:.3g} (tolerance "
            f"{tolerance:.3g}) at batch size {args[0].shape[0]}"
        )
    return diff


def _export_checked(
    module: nn.Module,
    example: torch.Tensor,
    check_input: torch.Tensor,
    tmp: Path,
    names: tuple[str, list[str]],
    tolerance: float,
) -> float:
    """Export into `tmp` and verify it at another batch size; OnnxExportError when it is off."""
    _export(module, example, tmp, names[0], names[1])
    return check_onnx_against_torch(module, tmp, check_input, tolerance=tolerance)


def export_sprite_vae_onnx(
    vae: SpriteVAE, out_dir: str | Path, *, tolerance: float = DEFAULT_TOLERANCE, seed: int = 0
) -> OnnxVaeExport:
    """Export `vae` to `out_dir/sprite_vae_encoder.onnx` and `out_dir/sprite_vae_decoder.onnx`.

    The model is exported in eval mode (BatchNorm with running statistics) and its previous mode is
    restored afterwards. Both graphs are written to temp files and verified with onnxruntime at a
    batch size other than the traced one; only when both match torch within `tolerance` are they
    renamed into place, so a failed export never leaves a new encoder beside an old decoder.
    """
    out = Path(out_dir)
    gen = torch.Generator().manual_seed(seed)
    device = next(vae.parameters()).device
    n = TRACE_BATCH + CHECK_BATCH
    images = torch.rand(n, vae.channels, vae.image_size, vae.image_size, generator=gen).to(device)
    latents = torch.randn(n, vae.latent_dim, generator=gen).to(device)
    finals = (out / VAE_ENCODER_ONNX, out / VAE_DECODER_ONNX)
    was_training = vae.training
    vae.eval()
    # Both temp files are renamed into place only when the block ends, i.e. after both checks passed.
    with contextlib.ExitStack() as stack:
        stack.callback(vae.train, was_training)
        temps = [stack.enter_context(atomic_path(final)) for final in finals]
        enc_diff = _export_checked(
            vae.encoder, images[:TRACE_BATCH], images[TRACE_BATCH:], temps[0],
            ("image", ["mu", "log_var"]), tolerance,
        )  # fmt: skip
        dec_diff = _export_checked(
            vae.decoder, latents[:TRACE_BATCH], latents[TRACE_BATCH:], temps[1],
            ("latent", ["image"]), tolerance,
        )  # fmt: skip
    return OnnxVaeExport(finals[0], finals[1], enc_diff, dec_diff)


def decode_with_onnxruntime(decoder_path: str | Path, latents: np.ndarray) -> np.ndarray:
    """Run an exported decoder: (N, latent_dim) float32 -> (N, 4, S, S) images, as CatSith would."""
    session = ort.InferenceSession(str(decoder_path), providers=["CPUExecutionProvider"])
    (image,) = session.run(["image"], {"latent": latents.astype(np.float32)})
    return np.asarray(image)
