"""Proof that a promoted package loads: the Python twin of CatSith's integration test (the guide's
`tests/neural_integration.rs`). A LoRA on the tiny base goes into a CatSith package; diffusers loads
the base plus the package's safetensors and renders sprites that differ from the base's."""

from __future__ import annotations

from pathlib import Path

import torch

from catsith_sweep.export.lora_formats import lora_delta, lora_layers, save_peft_safetensors
from catsith_sweep.models.builtin import load_parts
from catsith_sweep.registry.package import write_package
from catsith_sweep.registry.verify import verify_package
from catsith_sweep.registry.weights_bin import read_weights_bin
from catsith_sweep.trainers.diffusion import generate

PROMPTS = ["pixel art game sprite, fighter vehicle, facing up, green colored",
           "pixel art game sprite, asteroid environment", "pixel art game sprite, bullet projectile"]


def _trained_like_lora(base: Path) -> list:
    from peft import LoraConfig

    torch.manual_seed(0)
    parts = load_parts(base)
    parts.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():  # a trained adapter has a non-zero up projection; PEFT starts it at 0
        for name, param in parts.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    return lora_layers(parts.unet)


def test_promoted_package_loads_in_diffusers(tiny_base: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    layers = _trained_like_lora(tiny_base)
    peft_file = save_peft_safetensors(layers, tmp_path / "pytorch_lora_weights.safetensors")
    result = write_package(tmp_path / "loras", slug="test-style", layers=layers, name="test-style",
                           category="Aesthetic", creator="tests", tags=["pixel-art"],
                           compatible_with=[("diffusion_v1", "1")],
                           extra_files={"pytorch_lora_weights.safetensors": peft_file})
    package = result.path
    assert not [f for f in verify_package(package) if f.is_error]

    # CatSith's merge from weights.bin equals the adapter's own delta, layer by layer.
    stored = read_weights_bin(package / "weights.bin")
    for layer, bin_layer in zip(layers, stored.layers, strict=True):
        restored = bin_layer.to_lora_layer(layer.alpha)
        torch.testing.assert_close(lora_delta(restored), lora_delta(layer), atol=1e-6, rtol=0)

    device = torch.device("cpu")
    base = load_parts(tiny_base)
    before = generate(base, PROMPTS, [42], steps=4, guidance_scale=4.0, device=device)
    from catsith_sweep.models.builtin import to_pipeline

    pipe = to_pipeline(base)
    pipe.load_lora_weights(str(package), weight_name="pytorch_lora_weights.safetensors")
    after = generate(base, PROMPTS, [42], steps=4, guidance_scale=4.0, device=device)
    assert after.shape == (len(PROMPTS), 4, 64, 64)
    assert after.min() >= 0 and after.max() <= 1
    assert (after - before).abs().mean() > 1e-3, "the LoRA changed nothing"
    again = generate(base, PROMPTS, [42], steps=4, guidance_scale=4.0, device=device)
    torch.testing.assert_close(again, after)  # fixed seed: the same sprites
