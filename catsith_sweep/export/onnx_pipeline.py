"""Export a Stable-Diffusion-style pipeline (a base or a distilled student) as the ONNX folder CatSith runs.

The layout is the one optimum's `optimum-cli export onnx --task stable-diffusion` writes, which
CatSith's ONNX route reads (catsith-formats.md §3) and diffusers' `OnnxStableDiffusionPipeline` loads:

    model_index.json
    text_encoder/model.onnx   input_ids (int32, N x T)        -> last_hidden_state, pooler_output
    unet/model.onnx           sample, timestep, encoder_hidden_states -> out_sample
    vae_encoder/model.onnx    sample (N x C x H x W in [-1, 1]) -> latent_sample
    vae_decoder/model.onnx    latent_sample                    -> sample (N x C x H x W in [-1, 1])
    tokenizer/  scheduler/    as diffusers saves them

optimum itself does not install beside this project's transformers (it pins transformers < 4.58), so
the graphs are exported here with torch's exporter. Each graph is checked at export time against its
torch module in onnxruntime at a batch size other than the traced one (`check_onnx_against_torch`; a
difference beyond `PIPELINE_TOLERANCE` is an OnnxExportError and no folder is left). The tests also run
the whole denoising loop in onnxruntime through diffusers' ONNX pipeline for a 4-latent-channel layout
(that pipeline draws and checks 4-channel noise only) (tests/test_onnx_pipeline.py).

ONNX SD pipelines scale latents by SD-1.x's constant 0.18215, while a VAE built here has its own
`scaling_factor` (1 / std of its latents). The difference is folded into the two VAE graphs, so the
folder gives the same images as the torch pipeline in any ONNX SD runtime; `vae_decoder/config.json`
records `scaling_factor: 0.18215` accordingly, and the original under `catsith_scaling_factor`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from catsith_sweep.io import staged_dir

ONNX_SD_SCALING = 0.18215  # what ONNX SD pipelines (diffusers, optimum) multiply latents by
OPSET_VERSION = 17
MODEL_FILE = "model.onnx"
COMPONENTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
TRACE_BATCH, CHECK_BATCH = 2, 3  # traced at one batch size, checked at another: a baked-in batch shows
PIPELINE_TOLERANCE = 1e-3
"""Max abs difference allowed between onnxruntime and torch per graph. Looser than the SpriteVAE's 1e-4:
an SD-sized UNet or text encoder in float32 differs by ~1e-4 from reordered sums alone."""


@dataclass(frozen=True)
class OnnxPipelineExport:
    """Where the folder is, each graph's file, and each graph's max abs difference from torch (checked
    at export time at another batch size)."""

    directory: Path
    files: dict[str, Path]
    max_abs_diffs: dict[str, float]


def _wrappers(parts: Any) -> dict[str, Any]:
    import torch

    scale = float(parts.vae.config.scaling_factor)

    class TextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = parts.text_encoder

        def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.model(input_ids.long(), return_dict=False)
            return out[0], out[1]

    class Unet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = parts.unet

        def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
                    ) -> torch.Tensor:
            return self.model(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    class VaeEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = parts.vae

        def forward(self, sample: torch.Tensor) -> torch.Tensor:
            # The runtime multiplies by 0.18215; the latent the UNet expects is mean * scale.
            return self.model.encode(sample).latent_dist.mean * (scale / ONNX_SD_SCALING)

    class VaeDecoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = parts.vae

        def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
            # The runtime divides by 0.18215; the VAE wants latents divided by its own scale.
            return self.model.decode(latent_sample * (ONNX_SD_SCALING / scale), return_dict=False)[0]

    return {"text_encoder": TextEncoder(), "unet": Unet(), "vae_encoder": VaeEncoder(),
            "vae_decoder": VaeDecoder()}


def _examples(parts: Any, resolution: int, batch_size: int = TRACE_BATCH
              ) -> dict[str, tuple[tuple[Any, ...], list[str], list[str], dict]]:
    """Per graph: example inputs (`batch_size` rows, seeded), input and output names, dynamic axes."""
    import torch

    gen = torch.Generator().manual_seed(batch_size)
    n = batch_size

    tokens = int(parts.tokenizer.model_max_length)
    channels = int(parts.vae.config.in_channels)
    latent_channels = int(parts.unet.config.in_channels)
    factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    side = resolution // factor
    hidden = int(parts.text_encoder.config.hidden_size)
    batch = {0: "batch"}
    return {
        "text_encoder": ((torch.randint(0, int(parts.tokenizer.vocab_size), (n, tokens), generator=gen,
                                        dtype=torch.int32),), ["input_ids"],
                         ["last_hidden_state", "pooler_output"],
                         {"input_ids": batch, "last_hidden_state": batch, "pooler_output": batch}),
        "unet": ((torch.randn(n, latent_channels, side, side, generator=gen), torch.tensor([10.0]),
                  torch.randn(n, tokens, hidden, generator=gen)), ["sample", "timestep", "encoder_hidden_states"],
                 ["out_sample"], {"sample": batch, "encoder_hidden_states": batch, "out_sample": batch}),
        "vae_encoder": ((torch.rand(n, channels, resolution, resolution, generator=gen) * 2 - 1,), ["sample"],
                        ["latent_sample"], {"sample": batch, "latent_sample": batch}),
        "vae_decoder": ((torch.randn(n, latent_channels, side, side, generator=gen),), ["latent_sample"], ["sample"],
                        {"latent_sample": batch, "sample": batch}),
    }


def _export_graph(module: Any, args: tuple[Any, ...], path: Path, inputs: list[str], outputs: list[str],
                  dynamic_axes: dict) -> None:
    import onnx
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The legacy exporter (no onnxscript dependency) announces its deprecation on every call.
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic_axes, opset_version=OPSET_VERSION, dynamo=False)
    onnx.checker.check_model(str(path))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))


def _model_index() -> dict[str, Any]:
    onnx_model = ["diffusers", "OnnxRuntimeModel"]
    return {
        "_class_name": "OnnxStableDiffusionPipeline", "_diffusers_version": _diffusers_version(),
        "text_encoder": onnx_model, "unet": onnx_model, "vae_encoder": onnx_model, "vae_decoder": onnx_model,
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False,
    }


def _diffusers_version() -> str:
    import diffusers

    return str(diffusers.__version__)


def _write_folder(parts: Any, staging: Path, resolution: int) -> tuple[dict[str, Path], dict[str, float]]:
    import torch

    from catsith_sweep.export.onnx_vae import check_onnx_against_torch

    files: dict[str, Path] = {}
    diffs: dict[str, float] = {}
    wrappers, examples = _wrappers(parts), _examples(parts, resolution)
    checks = _examples(parts, resolution, CHECK_BATCH)
    with torch.no_grad():
        for name in COMPONENTS:
            args, inputs, outputs, axes = examples[name]
            files[name] = staging / name / MODEL_FILE
            _export_graph(wrappers[name], args, files[name], inputs, outputs, axes)
            diffs[name] = check_onnx_against_torch(wrappers[name], files[name], checks[name][0],
                                                   tolerance=PIPELINE_TOLERANCE)
    _write_json(staging / "unet" / "config.json", dict(parts.unet.config))
    _write_json(staging / "text_encoder" / "config.json", parts.text_encoder.config.to_dict())
    vae_config = {**dict(parts.vae.config), "scaling_factor": ONNX_SD_SCALING,
                  "catsith_scaling_factor": float(parts.vae.config.scaling_factor)}
    for name in ("vae_encoder", "vae_decoder"):
        _write_json(staging / name / "config.json", vae_config)
    parts.tokenizer.save_pretrained(staging / "tokenizer")
    parts.scheduler.save_pretrained(staging / "scheduler")
    _write_json(staging / "model_index.json", _model_index())
    return files, diffs


def export_onnx_pipeline(parts: Any, out_dir: str | Path, *, resolution: int = 64) -> OnnxPipelineExport:
    """Write `parts` (a `DiffusionParts`: tokenizer, text encoder, UNet, VAE, scheduler) to `out_dir` in
    the optimum/CatSith ONNX layout, each graph checked against torch in onnxruntime (OnnxExportError
    beyond `PIPELINE_TOLERANCE`). The folder is written beside `out_dir` and renamed into place, so a
    failed export leaves any earlier folder whole."""
    target = Path(out_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(target) as staging:
        written, diffs = _write_folder(parts, staging, resolution)
        files = {name: path.relative_to(staging) for name, path in written.items()}
    return OnnxPipelineExport(target, {k: target / v for k, v in files.items()}, diffs)


def load_onnx_pipeline(directory: str | Path) -> Any:
    """The exported folder as diffusers' `OnnxStableDiffusionPipeline` (onnxruntime, CPU). It runs bases
    with 4 latent channels only (SD's; diffusers draws and checks (N, 4, H/8, W/8) noise whatever the
    UNet takes), so not the 8-channel builtin v3: run its `unet/model.onnx` with the channel count of
    its `sample` input, as `unet_session_output` does."""
    from diffusers import OnnxStableDiffusionPipeline

    with warnings.catch_warnings():
        # diffusers announces OnnxRuntimeModel's move to optimum, which cannot install beside our stack.
        warnings.simplefilter("ignore", FutureWarning)
        return OnnxStableDiffusionPipeline.from_pretrained(str(directory), provider="CPUExecutionProvider")


def unet_session_output(directory: str | Path, sample: np.ndarray, timestep: np.ndarray,
                        encoder_hidden_states: np.ndarray) -> np.ndarray:
    """One call of the exported UNet in onnxruntime (CPU): the noise prediction for `sample`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(Path(directory) / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"sample": sample, "timestep": timestep, "encoder_hidden_states": encoder_hidden_states}
    return np.asarray(session.run(None, feeds)[0])
