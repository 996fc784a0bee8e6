"""LoRA exports round-trip through diffusers' own loader and through our reader, alpha != rank included."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from catsith_sweep.export.lora_formats import (
    LoraFormatError,
    LoraLayer,
    apply_layers,
    load_lora_file,
    lora_delta,
    lora_layers,
    read_catsith_json,
    save_catsith_json,
    save_kohya_safetensors,
    save_peft_safetensors,
)

torch.set_num_threads(1)

UNET_CONFIG = {
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "norm_num_groups": 8,
    "attention_head_dim": 4,
}
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclass
class Tiny:
    """A trained-adapter reference: base weights, adapted models, their outputs and the exported layers."""

    base_unet: dict[str, torch.Tensor]
    base_te: dict[str, torch.Tensor]
    te_config: Any
    tokenizer: Any
    vae: Any
    ids: torch.Tensor
    x: torch.Tensor
    t: torch.Tensor
    ref_enc: torch.Tensor
    ref_out: torch.Tensor
    base_out: torch.Tensor
    layers: list[LoraLayer]


def _tokenizer() -> Any:
    """A CLIP tokenizer built in memory (no hub): a fixed 4-entry BPE vocabulary.

    In transformers 5 CLIPTokenizerFast is an alias of CLIPTokenizer, which takes a `tokenizer_object`.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "a": 3}
    obj = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    obj.pre_tokenizer = pre_tokenizers.Whitespace()
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    return CLIPTokenizer(
        tokenizer_object=obj, unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=77, **special
    )


def _randomise_lora_b(*models: torch.nn.Module) -> None:
    # PEFT initialises lora_B to zero: an untrained adapter would make every comparison vacuous.
    with torch.no_grad():
        for model in models:
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.1)


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet: Any = UNet2DConditionModel(**UNET_CONFIG)
    te_config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=1000,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    te: Any = CLIPTextModel(te_config)
    vae = AutoencoderKL(
        block_out_channels=(8,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=8,
    )
    base_unet = {k: v.clone() for k, v in unet.state_dict().items()}
    base_te = {k: v.clone() for k, v in te.state_dict().items()}
    tokenizer = _tokenizer()
    ids = tokenizer(["a a"], padding="max_length", max_length=8, return_tensors="pt").input_ids
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([10])
    with torch.no_grad():
        base_out = unet(x, t, te(ids)[0]).sample
    # alpha != rank on both components, and different from each other.
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=UNET_TARGETS))
    # transformers 5.24's add_adapter wants peft >= 0.22; inject through peft itself (as diffusers does).
    te = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=2, target_modules=TE_TARGETS), te)
    _randomise_lora_b(unet, te)
    with torch.no_grad():
        ref_enc = te(ids)[0]
        ref_out = unet(x, t, ref_enc).sample
    layers = lora_layers(unet, te)
    return Tiny(base_unet, base_te, te_config, tokenizer, vae, ids, x, t, ref_enc, ref_out, base_out, layers)


def _fresh_pipeline(tiny: Tiny) -> Any:
    """A StableDiffusionPipeline of the base (un-adapted) tiny models."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet: Any = UNet2DConditionModel(**UNET_CONFIG)
    unet.load_state_dict(tiny.base_unet)
    te: Any = CLIPTextModel(tiny.te_config)
    te.load_state_dict(tiny.base_te)
    return StableDiffusionPipeline(
        vae=tiny.vae,
        text_encoder=te,
        tokenizer=tiny.tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(steps_offset=1, clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _outputs(pipe: Any, tiny: Tiny) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        enc = pipe.text_encoder(tiny.ids)[0]
        return enc, pipe.unet(tiny.x, tiny.t, enc).sample


def _assert_same_deltas(got: list[LoraLayer], want: list[LoraLayer], atol: float = 1e-6) -> None:
    assert {layer.name for layer in got} == {layer.name for layer in want}
    by_name = {layer.name: layer for layer in got}
    for layer in want:
        torch.testing.assert_close(lora_delta(by_name[layer.name]), lora_delta(layer), atol=atol, rtol=0)


def test_lora_layers_neutral_form(tiny: Tiny) -> None:
    names = [layer.name for layer in tiny.layers]
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q" in names
    assert sum(n.startswith("unet.") for n in names) == 32
    assert sum(n.startswith("text_encoder.") for n in names) == 8
    for layer in tiny.layers:
        assert layer.rank == 4 and layer.down.shape == (4, layer.in_dim) and layer.up.shape == (layer.out_dim, 4)
        assert layer.alpha == (8.0 if layer.name.startswith("unet.") else 2.0)
        assert lora_delta(layer).abs().max() > 0  # trained, not PEFT's zero init


def test_apply_layers_reproduces_adapter(tiny: Tiny) -> None:
    """Merging (alpha / rank) * up @ down into plain models gives the adapter's outputs: the delta is right."""
    pipe = _fresh_pipeline(tiny)
    assert apply_layers(pipe.unet, tiny.layers, component="unet") == 32
    assert apply_layers(pipe.text_encoder, tiny.layers, component="text_encoder") == 8
    enc, out = _outputs(pipe, tiny)
    torch.testing.assert_close(enc, tiny.ref_enc, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, tiny.ref_out, atol=1e-5, rtol=0)


def test_peft_safetensors_loads_in_diffusers(tiny: Tiny, tmp_path: Path) -> None:
    meta_in = {"base_model": "tiny-sd", "format": "spoof", "steps": 3}
    path = save_peft_safetensors(
        tiny.layers, tmp_path / "lora.safetensors", config={"trainer": "lora", "r": 4}, metadata=meta_in
    )
    with safe_open(str(path), framework="pt") as fh:
        keys, meta = set(fh.keys()), fh.metadata()
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in keys
    # transformers 5 names CLIP's modules `encoder.layers...` (4.x: `text_model.encoder.layers...`).
    assert any(k.startswith("text_encoder.") and k.endswith(".q_proj.lora_B.weight") for k in keys)
    assert not any(k.endswith(".alpha") for k in keys)  # diffusers rejects them: alpha is folded instead
    assert meta["catsith_sweep.rank"] == "4" and meta["catsith_sweep.alpha_folded"] == "true"
    assert json.loads(meta["catsith_sweep.config"]) == {"r": 4, "trainer": "lora"}
    assert meta["catsith_sweep.base_model"] == "tiny-sd" and meta["catsith_sweep.steps"] == "3"
    assert meta["catsith_sweep.format"] == "catsith_sweep.peft_diffusers_lora.v1" and meta["format"] == "pt"

    pipe = _fresh_pipeline(tiny)
    pipe.load_lora_weights(str(path))
    enc, out = _outputs(pipe, tiny)
    torch.testing.assert_close(enc, tiny.ref_enc, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, tiny.ref_out, atol=1e-5, rtol=0)
    assert (out - tiny.base_out).abs().max() > 1e-3  # the LoRA really changes the output


def test_kohya_safetensors_loads_in_diffusers(tiny: Tiny, tmp_path: Path) -> None:
    path = save_kohya_safetensors(tiny.layers, tmp_path / "kohya.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        keys = set(fh.keys())
        alpha = fh.get_tensor("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha")
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0.lora_up.weight" in keys
    assert any(k.startswith("lora_te_") for k in keys)
    assert float(alpha) == 8.0

    pipe = _fresh_pipeline(tiny)
    pipe.load_lora_weights(str(path))
    enc, out = _outputs(pipe, tiny)
    torch.testing.assert_close(enc, tiny.ref_enc, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, tiny.ref_out, atol=1e-5, rtol=0)


def test_load_lora_file_reads_every_format(tiny: Tiny, tmp_path: Path) -> None:
    peft = load_lora_file(save_peft_safetensors(tiny.layers, tmp_path / "a.safetensors"))
    assert {layer.alpha for layer in peft} == {8.0, 2.0}  # the fold is undone
    _assert_same_deltas(peft, tiny.layers)

    names = [layer.name for layer in tiny.layers]
    kohya = load_lora_file(save_kohya_safetensors(tiny.layers, tmp_path / "k.safetensors"), module_names=names)
    _assert_same_deltas(kohya, tiny.layers)

    unet_only = [layer for layer in tiny.layers if layer.name.startswith("unet.")]
    _assert_same_deltas(
        load_lora_file(save_catsith_json(unet_only, tmp_path / "c.json", name="n", base_model="b")), unet_only
    )


def test_catsith_json_shape(tiny: Tiny, tmp_path: Path) -> None:
    unet_only = [layer for layer in tiny.layers if layer.name.startswith("unet.")]
    path = save_catsith_json(unet_only, tmp_path / "sprites.lora.json", name="sprites", base_model="tiny-sd")
    doc = json.loads(path.read_text())
    assert doc["metadata"] == {"name": "sprites", "version": "1.0", "base_model": "tiny-sd", "rank": 4, "alpha": 8.0}
    first = unet_only[0]
    entry = doc["layers"][first.name]
    assert set(entry) == {"A", "B"}
    assert (len(entry["A"]), len(entry["A"][0])) == (4, first.in_dim)  # A = lora_down as stored
    assert (len(entry["B"]), len(entry["B"][0])) == (first.out_dim, 4)  # B = lora_up as stored
    back = {layer.name: layer for layer in read_catsith_json(path)}
    assert torch.equal(back[first.name].down, first.down) and torch.equal(back[first.name].up, first.up)
    assert [p.name for p in tmp_path.iterdir()] == ["sprites.lora.json"]  # no temp file left behind


def test_catsith_json_refuses_mixed_alpha(tiny: Tiny, tmp_path: Path) -> None:
    with pytest.raises(LoraFormatError, match="one alpha"):
        save_catsith_json(tiny.layers, tmp_path / "x.json", name="n", base_model="b")  # alphas 8 and 2
    assert not (tmp_path / "x.json").exists()


def test_bad_inputs_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(LoraFormatError, match="same rank"):
        LoraLayer("unet.a", torch.zeros(4, 8), torch.zeros(8, 3), 4.0)
    layer = LoraLayer("unet.a", torch.ones(2, 3), torch.ones(5, 2), 2.0)
    with pytest.raises(LoraFormatError, match="duplicate"):
        save_peft_safetensors([layer, layer], tmp_path / "d.safetensors")
    with pytest.raises(LoraFormatError, match="must start with"):
        save_kohya_safetensors([LoraLayer("vae.a", torch.ones(2, 3), torch.ones(5, 2), 2.0)], tmp_path / "v.st")
    save_file({"unet.a.lora_A.weight": torch.ones(2, 3)}, str(tmp_path / "half.safetensors"))
    with pytest.raises(LoraFormatError, match="lacks its up weight"):
        load_lora_file(tmp_path / "half.safetensors")
    save_file({"unet.a.weight": torch.ones(2, 3)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(LoraFormatError, match="not LoRA weights"):
        load_lora_file(tmp_path / "odd.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(LoraFormatError, match="cannot read"):
        load_lora_file(tmp_path / "junk.safetensors")


def test_foreign_peft_file_alpha_sources(tmp_path: Path) -> None:
    """CatSith-style `.alpha` keys and diffusers' lora_adapter_metadata both give alpha on reading."""
    from safetensors.torch import save_file

    down, up = torch.randn(2, 3), torch.randn(5, 2)
    save_file(
        {"unet.m.lora_A.weight": down, "unet.m.lora_B.weight": up, "unet.m.alpha": torch.tensor(6.0)},
        str(tmp_path / "a.safetensors"),
    )
    assert load_lora_file(tmp_path / "a.safetensors")[0].alpha == 6.0
    meta = {"format": "pt", "lora_adapter_metadata": json.dumps({"unet.r": 2, "unet.lora_alpha": 5})}
    save_file({"unet.m.lora_A.weight": down, "unet.m.lora_B.weight": up}, str(tmp_path / "m.safetensors"), meta)
    assert load_lora_file(tmp_path / "m.safetensors")[0].alpha == 5.0
    save_file({"unet.m.lora_A.weight": down, "unet.m.lora_B.weight": up}, str(tmp_path / "r.safetensors"))
    assert load_lora_file(tmp_path / "r.safetensors")[0].alpha == 2.0  # no alpha anywhere: alpha = rank


def test_diffusers_rejects_alpha_keys_in_peft_naming(tiny: Tiny, tmp_path: Path) -> None:
    """Why save_peft_safetensors folds alpha instead of writing `<layer>.alpha`: diffusers 0.42 refuses it.

    If a diffusers upgrade makes this pass, the fold can be revisited (CatSith reads `.alpha` keys).
    """
    from safetensors.torch import save_file

    layer = tiny.layers[0]
    tensors = {f"{layer.name}.lora_A.weight": layer.down, f"{layer.name}.lora_B.weight": layer.up}
    save_file({**tensors, f"{layer.name}.alpha": torch.tensor(layer.alpha)}, str(tmp_path / "a.safetensors"))
    with pytest.raises(ValueError, match="contain `'lora'` substring"):
        _fresh_pipeline(tiny).load_lora_weights(str(tmp_path / "a.safetensors"))
