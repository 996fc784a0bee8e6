"""Base models: where `model.base` points (builtin, folder, hub id) and what the builtin tiny base is."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

from catsith_sweep.errors import ModelSourceError
from catsith_sweep.models.base_source import base_location, builtin_ready, load_base
from catsith_sweep.models.builtin import (
    MAX_TOKENS,
    DiffusionParts,
    builtin_dir,
    load_parts,
    save_parts,
    train_tokenizer,
)
from catsith_sweep.trainers import diffusion as D
from catsith_sweep.trainers.base_build import ensure_builtin

torch.set_num_threads(1)

PROMPTS = ["pixel art game sprite, fighter vehicle, facing left", "pixel art game sprite, asteroid"]


@pytest.mark.parametrize("offline", ["1", "0"], ids=["HF_HUB_OFFLINE", "no-network"])
def test_hub_id_fails_fast_offline(offline: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A hub id on a machine without the hub errors in seconds, saying what to do; it never hangs."""
    from diffusers import StableDiffusionPipeline  # import time is not what this measures

    assert StableDiffusionPipeline is not None
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    assert base_location("catsith-test/no-such-model", tmp_path) == "catsith-test/no-such-model"
    started = time.monotonic()
    with pytest.raises(ModelSourceError, match="catsith-test/no-such-model") as caught:
        load_base("catsith-test/no-such-model", tmp_path)
    assert time.monotonic() - started < 10
    if offline == "1":
        assert "cannot be reached" in str(caught.value) and "model.base" in str(caught.value)


@pytest.mark.parametrize("name", ["missing-model", "./runs/missing", "/definitely/not/here", "a/b/c"])
def test_missing_folder_is_named(name: str, tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="is not a diffusers model folder") as caught:
        load_base(name, tmp_path)
    assert repr(name) in str(caught.value)


def test_folder_without_model_index_is_refused(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelSourceError, match="no model_index.json") as caught:
        load_base(str(tmp_path), None)
    assert str(tmp_path) in str(caught.value)


def test_a_folder_base_build_wrote_is_a_base(tmp_path: Path) -> None:
    """`base build --out DIR` puts the pipeline in DIR/diffusers: `model.base: DIR` resolves to it."""
    (tmp_path / "built" / "diffusers").mkdir(parents=True)
    (tmp_path / "built" / "diffusers" / "model_index.json").write_text("{}")
    assert base_location(str(tmp_path / "built"), None) == tmp_path / "built" / "diffusers"
    assert base_location(str(tmp_path / "built" / "diffusers"), None) == tmp_path / "built" / "diffusers"
    (tmp_path / "built" / "model_index.json").write_text("{}")  # a pipeline folder itself comes first
    assert base_location(str(tmp_path / "built"), None) == tmp_path / "built"


def test_unbuilt_builtin_is_refused_without_building(tmp_path: Path) -> None:
    """Loading resolves and loads only: a builtin base not in the cache is an error naming the fix."""
    started = time.monotonic()
    with pytest.raises(ModelSourceError, match=r"'builtin:catsith-tiny' is not built yet.*base build"):
        load_base("builtin:catsith-tiny", tmp_path)
    assert time.monotonic() - started < 5
    assert not (tmp_path / "bases").exists()


def test_unknown_builtin_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="unknown builtin base 'builtin:catsith-huge'.*builtin:catsith-tiny"):
        load_base("builtin:catsith-huge", tmp_path)
    assert not (tmp_path / "bases").exists()  # nothing was built for it


def _outputs(parts: DiffusionParts) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(2, int(parts.unet.config.in_channels), 8, 8, generator=generator)
    ids = D.tokenize(parts, PROMPTS, torch.device("cpu"))
    with torch.no_grad():
        embeddings = parts.text_encoder(ids)[0]
        return {
            "ids": ids,
            "embeddings": embeddings,
            "unet": parts.unet(latents, torch.tensor([20, 700]), embeddings).sample,
            "decoded": parts.vae.decode(latents).sample,
        }


def test_load_parts_round_trips(tiny_base: Path, tmp_path: Path) -> None:
    parts = load_parts(tiny_base)
    save_parts(parts, tmp_path / "copy")
    again = load_parts(tmp_path / "copy")
    before, after = _outputs(parts), _outputs(again)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert before["ids"].shape == (2, MAX_TOKENS)
    assert again.rgba and again.vae.config.scaling_factor == parts.vae.config.scaling_factor
    assert dict(again.scheduler.config) == dict(parts.scheduler.config)


def test_builtin_name_loads_the_cached_base(tiny_base: Path, tmp_path: Path) -> None:
    """`builtin:catsith-tiny` resolves to the cache folder and loads from it without building again."""
    assert not builtin_ready("builtin:catsith-tiny", tmp_path)
    target = builtin_dir("catsith-tiny", tmp_path)
    shutil.copytree(tiny_base, target / "diffusers")
    assert builtin_ready("builtin:catsith-tiny", tmp_path)
    assert base_location("builtin:catsith-tiny", tmp_path) == target / "diffusers"
    started = time.monotonic()
    parts = load_base("builtin:catsith-tiny", tmp_path)
    assert time.monotonic() - started < 30
    assert sorted(p.name for p in target.iterdir()) == ["diffusers"]  # no build ran
    assert torch.equal(_outputs(parts)["unet"], _outputs(load_parts(tiny_base))["unet"])
    logged: list[str] = []
    ensure_builtin("builtin:catsith-tiny", tmp_path, log=logged.append)
    assert logged == [] and sorted(p.name for p in target.iterdir()) == ["diffusers"]  # built: nothing to do


def test_model_base_loads_the_folder_base_build_wrote(tiny_base: Path) -> None:
    """`model.base: DIR` for DIR from `base build --out DIR` (the pipeline is in DIR/diffusers)."""
    out_dir = tiny_base.parent
    assert (out_dir / "diffusers") == tiny_base and not (out_dir / "model_index.json").exists()
    assert base_location(str(out_dir), None) == tiny_base
    parts = load_base(str(out_dir), None)
    assert torch.equal(_outputs(parts)["unet"], _outputs(load_parts(tiny_base))["unet"])


def test_tiny_base_generates_rgba_sprites(tiny_base: Path) -> None:
    parts = load_parts(tiny_base)
    images = D.generate(parts, PROMPTS, [0, 1], steps=3, guidance_scale=4.0, device=torch.device("cpu"))
    assert images.shape == (4, 4, 64, 64) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    alpha = images[:, 3]
    assert alpha.std() > 0  # a real alpha channel from the RGBA VAE, not a constant fill
    again = D.generate(parts, PROMPTS[:1], [1], steps=3, guidance_scale=4.0, device=torch.device("cpu"))
    # Fixed seeds: the same sprite for the same prompt and seed, whatever else is in the batch.
    torch.testing.assert_close(again[0], images[1], atol=1e-4, rtol=0)
    assert (images[0] - images[1]).abs().max() > 1e-2


def test_tiny_base_build_result(tiny_base: Path) -> None:
    """`base build` leaves a diffusers folder, its resolved config, the last sample grid and that
    evaluation's held-out metrics."""
    root = tiny_base.parent
    assert (tiny_base / "model_index.json").is_file()
    assert json.loads((tiny_base / "catsith_base.json").read_text())["steps"] == 40
    assert yaml.safe_load((root / "config.yaml").read_text())["trainer"] == "full"
    assert (root / "samples" / "samples.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["step"] == 40 and metrics["split"] == "held-out"
    assert metrics["metrics"]["sprite_fid"] > 0 and "loss" not in metrics["metrics"]


def test_tokenizer_is_deterministic_and_whole_word(tmp_path: Path) -> None:
    captions = [
        "pixel art game sprite, fighter vehicle, facing up, green colored, transparent background, 16-bit retro style",
        "pixel art game sprite, asteroid hazard, grey colored, transparent background",
        "pixel art game sprite, fighter ship, facing down-left, red colored",
    ]
    first, second = train_tokenizer(captions), train_tokenizer(list(reversed(captions)))
    assert first.get_vocab() == second.get_vocab()
    for caption in captions:
        assert first(caption).input_ids == second(caption).input_ids
    tokens = first.convert_ids_to_tokens(first(captions[0]).input_ids)
    assert tokens[1:5] == ["pixel</w>", "art</w>", "game</w>", "sprite</w>"]  # each caption word is one token
    assert tokens.count(",</w>") == 5
    unseen = first("zebra quux!").input_ids
    assert unseen[0] == first.bos_token_id and unseen[-1] == first.eos_token_id
    assert first.eos_token_id not in unseen[1:-1]  # unseen words spell out from the byte alphabet, no unk
    first.save_pretrained(tmp_path / "tok")
    from transformers import CLIPTokenizer

    loaded = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.model_max_length == MAX_TOKENS
    for text in [*captions, "zebra quux!"]:
        assert loaded(text).input_ids == first(text).input_ids


def test_learning_rate_schedules() -> None:
    """Warm-up, then constant, one cosine to 0, or the warm-restarted cosine (full rate over the first
    half, then two quarter cycles from `RESTART_PEAK`)."""
    import math

    assert [D.lr_lambda("constant", 2, 10)(s) for s in (0, 1, 5)] == [0.5, 1.0, 1.0]
    cosine = D.lr_lambda("cosine", 2, 10)
    assert [cosine(s) for s in (0, 1)] == [0.5, 1.0]
    for step in range(2, 12):
        want = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - 2) / 8)))
        assert cosine(step) == pytest.approx(want)
    restarts = D.lr_lambda("cosine_restarts", 0, 1200)
    assert D.restart_cycles(1200) == [(0, 600, 1.0), (600, 300, D.RESTART_PEAK), (900, 300, D.RESTART_PEAK)]
    assert restarts(0) == 1.0 and restarts(300) == pytest.approx(0.5)
    assert restarts(599) < 1e-4 and restarts(600) == D.RESTART_PEAK and restarts(900) == D.RESTART_PEAK
    assert restarts(750) == pytest.approx(D.RESTART_PEAK / 2) and restarts(1200) == pytest.approx(0.0)


def test_captions_past_the_token_limit_are_counted_once_not_warned_per_call(
        tiny_base: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Captions longer than the text encoder's context lose their tail: a run param says how many, and
    sampling does not repeat diffusers' truncation warning on every batch."""
    parts = load_parts(tiny_base)
    limit = int(parts.tokenizer.model_max_length)
    long_caption = " ".join(["red"] * (limit + 5))
    assert D.caption_overflow_params(parts.tokenizer, PROMPTS) == {}
    assert D.caption_overflow_params(parts.tokenizer, [*PROMPTS, long_caption]) == {
        D.CAPTIONS_OVER_LIMIT_PARAM: f"1 of {len(PROMPTS) + 1} (limit {limit} tokens, longest {limit + 7})"}
    with caplog.at_level(logging.WARNING):
        D.generate(parts, [long_caption], [0], steps=2, guidance_scale=4.0, device=torch.device("cpu"))
    assert not [r for r in caplog.records if "truncated" in r.getMessage() or "sequence length" in r.getMessage()]
