"""The builtin base model `builtin:catsith-tiny` and base-model resolution.

`builtin:catsith-tiny` is a scaled-down copy of segmind/tiny-sd's layout: a diffusers
UNet2DConditionModel, an AutoencoderKL with 4x down-sampling (a 64 px sprite is a 16x16x8 latent) and a
CLIPTextModel, with a BPE tokenizer trained offline on the dataset's captions. Its VAE takes RGBA (4
channels) so generated sprites keep their alpha; a real RGB base (segmind/tiny-sd) gets sprites
composited on a background instead.

Why 16x16 and not SD's 8x: a sprite has no redundancy for an 8x VAE to remove. At 8x8x4 the VAE blurs
one-pixel outlines and cannot hold palettes it was not built on; at 8x8x16 it learns as slowly
(bench/vae_roundtrip.py and the base-build notes give the measured round trips). The UNet pays for
the 4x larger latent with one cheap extra level (32 channels at 16x16, no attention) in front of the
old three, about 1.4x the old UNet's FLOPs per step.

Why 8 latent channels (v3; v2 had 4): with 4 channels per 4x4 pixels the VAE spent its capacity on
alpha, brightness and edges and kept a single chroma axis: green came back yellow or blue, red as
orange, magenta as pale blue, in every style. 8 channels and a chroma term in the VAE loss
(models/vae_loss.py, `full.vae_chroma_weight`) keep every hue; the UNet pays only in its first and
last convolution. Both are saved and loaded as diffusers folders, so a local path
or a hub id goes down the same code path as the builtin one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catsith_sweep.errors import ModelSourceError
from catsith_sweep.layout import BASES_DIR, default_cache_dir

BUILTIN_PREFIX = "builtin:"
BUILTIN_NAMES = ("catsith-tiny",)
MAX_TOKENS = 32
"""Text context of the builtin base; a short context keeps attention cheap. Captions of the guide run
28-36 tokens with this tokenizer (median 34 on a neon-style set), so the last words (often the style)
are cut from about half of them. Raising it costs a rebuild and UNet time (session 4's first 8-channel
attempt used 48: 0.34 vs 0.29 s/step; trainers/base_build.py)."""

# Architecture of catsith-tiny. Kept here (not in the experiment file) so a cached base always
# matches the code that reads it; a change here must bump BUILTIN_VERSION.
# v2: 16x16 latent (was 8x8), UNet level at 16x16, VAE trained with the sprite loss and recolouring.
# v3: 8 latent channels, VAE trained with the chroma term (weight 1).
BUILTIN_VERSION = 3
LATENT_CHANNELS = 8
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 4, "out_channels": 4, "latent_channels": LATENT_CHANNELS, "sample_size": 64,
    "down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64], "layers_per_block": 1, "norm_num_groups": 8,
    "mid_block_add_attention": False,
}
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16, "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 96, 128], "layers_per_block": 1, "cross_attention_dim": 64,
    "attention_head_dim": 8, "norm_num_groups": 16,
}
TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
    "max_position_embeddings": MAX_TOKENS, "projection_dim": 64,
}


@dataclass
class DiffusionParts:
    """The pieces of a Stable-Diffusion-style model, as diffusers/transformers objects."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    scheduler: Any

    @property
    def rgba(self) -> bool:
        """Whether the VAE works on RGBA pixels (the builtin) or RGB (standard SD bases)."""
        return int(self.vae.config.in_channels) == 4


def builtin_dir(name: str, cache_dir: Path | None) -> Path:
    return (cache_dir or default_cache_dir()) / BASES_DIR / f"{name}-v{BUILTIN_VERSION}"


def train_tokenizer(captions: list[str]) -> Any:
    """A CLIP BPE tokenizer for `captions`, built offline and deterministically (the same captions give
    the same ids, so a base build is reproducible from its seed; `tokenizers`' BPE trainer breaks ties
    differently from run to run). Every caption word becomes one token: merges are added word by word,
    in sorted order, each one joining the first two pieces left, until the word is whole; an added merge
    ranks after all earlier ones, so it never splits a word finished before. The byte-level alphabet
    keeps unseen words encodable."""
    from tokenizers import models, pre_tokenizers
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer(model_max_length=MAX_TOKENS).backend_tokenizer
    words = sorted({piece for caption in captions for piece, _ in
                    backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(caption))})
    specials = ["<|startoftext|>", "<|endoftext|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([*specials, *alphabet, *(c + "</w>" for c in alphabet)])}
    merges: list[tuple[str, str]] = []
    for word in words:
        while True:
            bpe = models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                             unk_token=specials[1])
            pieces = [token.value for token in bpe.tokenize(word)]
            if len(pieces) < 2:
                break
            merges.append((pieces[0], pieces[1]))
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
    # `tokenizers`' BPE takes (left, right) pairs; transformers' annotation only names the string form.
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)  # type: ignore[arg-type]


def build_untrained(captions: list[str]) -> DiffusionParts:
    """Fresh catsith-tiny parts: a tokenizer trained on `captions`, randomly initialised models."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = train_tokenizer(captions)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **TEXT_CONFIG,
    )
    return DiffusionParts(
        tokenizer=tokenizer,
        text_encoder=CLIPTextModel(text_config),
        vae=AutoencoderKL(**VAE_CONFIG),
        unet=UNet2DConditionModel(**UNET_CONFIG),
        scheduler=make_scheduler(),
    )


def make_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def to_pipeline(parts: DiffusionParts) -> Any:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=parts.unet,
        scheduler=parts.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def save_parts(parts: DiffusionParts, directory: Path) -> None:
    """Save as a diffusers folder (model_index.json, tokenizer/, text_encoder/, unet/, vae/,
    scheduler/), the layout CatSith and `from_pretrained` read."""
    to_pipeline(parts).save_pretrained(directory, safe_serialization=True)


def load_parts(source: str | Path, *, revision: str | None = None, local_only: bool = False) -> DiffusionParts:
    """Load a diffusers folder, or a hub id (from the local HF cache only when `local_only`)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Loading bars from every concurrent trial would drown the sweep's own progress table.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    is_folder = isinstance(source, Path) or Path(source).exists()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(source), revision=revision, local_files_only=is_folder or local_only,
            safety_checker=None, requires_safety_checker=False,
        )
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"model.base: cannot load {str(source)!r}: {exc}") from None
    return DiffusionParts(pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, pipe.scheduler)


def parse_builtin(base: str) -> str | None:
    """`builtin:catsith-tiny` -> `catsith-tiny`; None for paths and hub ids."""
    if not base.startswith(BUILTIN_PREFIX):
        return None
    name = base[len(BUILTIN_PREFIX):]
    if name not in BUILTIN_NAMES:
        raise ModelSourceError(f"model.base: unknown builtin base {base!r}; known: "
                               + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_NAMES))
    return name
