"""Training captions, following the guide's caption_generator word for word (or, with
colors="measured", naming the colour the sprite's pixels show: see COLOR_RULES).

How metadata's `captions.style_prefix` / `style_suffix` combine: they REPLACE the generator's fixed
first part ("pixel art game sprite") and fixed last parts ("transparent background", "16-bit retro
style"); when metadata.json omits `captions`, those defaults are the guide's words, so the caption is
exactly the guide's. Prefix and suffix are split on commas and trimmed (so "sprite, " and "sprite" are
the same), empty parts are dropped, and a part already in the caption (case-insensitive) is not
repeated: a prefix of "pixel art, fighter vehicle" never yields "fighter vehicle" twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from catsith_sweep.data.metadata import (
    DEFAULT_STYLE_PREFIX,
    DEFAULT_STYLE_SUFFIX,
    IMAGES_DIR,
    Entity,
    caption_path,
    load_metadata,
)
from catsith_sweep.data.validate import entity_problems
from catsith_sweep.data.vocab import DIRECTION_NAMES, color_name
from catsith_sweep.errors import DatasetError
from catsith_sweep.io import atomic_write_bytes


def color_word(base_color: Any) -> str | None:
    """The guide's colour rule: the strictly largest channel names the colour, ties name none."""
    if base_color is None:
        return None
    r, g, b = base_color
    if r > g and r > b:
        return "red colored"
    if g > r and g > b:
        return "green colored"
    if b > r and b > g:
        return "blue colored"
    return None


ColorRule = Literal["guide", "measured"]
COLOR_RULES: tuple[ColorRule, ...] = ("guide", "measured")
"""How a caption names colour. `guide`: the guide's rule on base_color, word for word (any red-dominant
colour is "red"). `measured`: vocab.color_name's words (grey, brown, orange, ...) for the colour that
covers most of the entity's opaque pixels, or for base_color when no pixels are given."""

# Share of opaque pixels that non-black, non-white colours must reach to name the sprite: below it the
# sprite really is black or white; above it, outlines (black) and highlights (white) do not count.
HUE_SHARE = 0.25


def measured_color(pixels: np.ndarray | Sequence[np.ndarray]) -> str | None:
    """The colour word (vocab.COLOR_NAMES) of RGBA uint8 sprites (..., H, W, 4): the name covering most
    opaque pixels (alpha >= 128), outlines and highlights left out (HUE_SHARE); None with no opaque pixel."""
    flat = np.concatenate([np.asarray(p).reshape(-1, 4) for p in
                           ([pixels] if isinstance(pixels, np.ndarray) else pixels)])
    opaque = flat[flat[:, 3] >= 128, :3]
    if not len(opaque):
        return None
    colours, counts = np.unique(opaque, axis=0, return_counts=True)  # few colours in pixel art: name each once
    votes: dict[str, int] = {}
    for colour, count in zip(colours.tolist(), counts.tolist(), strict=True):
        name = color_name(colour)
        votes[name] = votes.get(name, 0) + int(count)
    hued = {k: v for k, v in votes.items() if k not in ("black", "white")}
    if sum(hued.values()) >= HUE_SHARE * len(opaque):
        votes = hued
    return max(sorted(votes), key=lambda k: votes[k])


def colour_phrase(base_color: Any, *, colors: ColorRule = "guide", pixels: Any = None) -> str | None:
    """The caption's colour part ("<word> colored") under rule `colors` (see COLOR_RULES)."""
    if colors == "guide":
        return color_word(base_color)
    if colors != "measured":
        raise DatasetError(f"caption colours {colors!r}: expected one of {', '.join(COLOR_RULES)}")
    if pixels is not None:
        name = measured_color(pixels)
    else:
        name = None if base_color is None else color_name(tuple(base_color))
    return None if name is None else f"{name} colored"


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def generate_caption(entity: Entity | Mapping[str, Any], direction: int, *,
                     prefix: str = DEFAULT_STYLE_PREFIX, suffix: str = DEFAULT_STYLE_SUFFIX,
                     colors: ColorRule = "guide", pixels: Any = None) -> str:
    """Caption of one sprite: `direction` is its index in the entity's files (ignored when the
    entity has one direction). Accepts an Entity or the guide's plain dict. `colors` picks the colour
    rule (COLOR_RULES); `pixels`, for `measured`, are the entity's RGBA sprites (all its directions,
    so every view of a design gets the same word)."""
    fields = entity.model_dump() if isinstance(entity, Entity) else dict(entity)
    directions = int(fields["directions"])
    body = [f"{fields['kind']} {fields['category']}"]
    if directions > 1:
        if not 0 <= direction < min(directions, len(DIRECTION_NAMES)):
            raise DatasetError(f"entity {fields.get('id', '?')}: direction {direction} is out of range "
                               f"0..{min(directions, len(DIRECTION_NAMES)) - 1}")
        body.append(DIRECTION_NAMES[direction])
    colour = colour_phrase(fields.get("base_color"), colors=colors, pixels=pixels)
    if colour:
        body.append(colour)
    parts: list[str] = []
    seen: set[str] = set()
    for part in [*_split(prefix), *body, *_split(suffix)]:
        if part.casefold() not in seen:
            seen.add(part.casefold())
            parts.append(part)
    return ", ".join(parts)


def _entity_pixels(root: Path, files: list[str]) -> list[np.ndarray]:
    """The RGBA pixels of an entity's images (for measured colours); DatasetError names an unreadable one."""
    from PIL import Image, UnidentifiedImageError

    out = []
    inside = (Path(root) / IMAGES_DIR).resolve()
    for name in files:
        path = Path(root) / IMAGES_DIR / name
        if not path.resolve().is_relative_to(inside):  # names are checked; a symlink may still point out
            raise DatasetError(f"images/{name}: resolves outside {inside}; expected a file inside images/")
        try:
            with Image.open(path) as image:
                out.append(np.asarray(image.convert("RGBA")))
        except (OSError, UnidentifiedImageError) as exc:
            raise DatasetError(f"images/{name}: cannot read it to measure its colours: {exc}") from None
    return out


def write_captions(root: Path, *, colors: ColorRule = "guide") -> int:
    """(Re)write captions/*.txt for every file listed in metadata.json, atomically; returns the count.

    Hand-written captions are overwritten: the generator's wording is what CatSith prompts with.
    `colors`: the colour rule (COLOR_RULES); `measured` reads every entity's images.
    Refuses (DatasetError) when metadata.json or an entity in it is invalid.
    """
    root = Path(root)
    meta = load_metadata(root)
    problems = entity_problems(meta)
    if problems:
        raise DatasetError(problems)
    prefix, suffix = meta.captions.style_prefix, meta.captions.style_suffix
    count = 0
    if colors not in COLOR_RULES:
        raise DatasetError(f"caption colours {colors!r}: expected one of {', '.join(COLOR_RULES)}")
    for entity in meta.entities:
        pixels = _entity_pixels(root, entity.files) if colors == "measured" else None
        for direction, name in enumerate(entity.files):
            text = generate_caption(entity, direction, prefix=prefix, suffix=suffix, colors=colors, pixels=pixels)
            atomic_write_bytes(caption_path(root, name), (text + "\n").encode("utf-8"))
            count += 1
    return count
