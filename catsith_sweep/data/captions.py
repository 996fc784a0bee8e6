"""Training captions, following the guide's caption_generator word for word.

How metadata's `captions.style_prefix` / `style_suffix` combine: they REPLACE the generator's fixed
first part ("pixel art game sprite") and fixed last parts ("transparent background", "16-bit retro
style"); when metadata.json omits `captions`, those defaults are the guide's words, so the caption is
exactly the guide's. Prefix and suffix are split on commas and trimmed (so "sprite, " and "sprite" are
the same), empty parts are dropped, and a part already in the caption (case-insensitive) is not
repeated: a prefix of "pixel art, fighter vehicle" never yields "fighter vehicle" twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from catsith_sweep.data.metadata import (
    DEFAULT_STYLE_PREFIX,
    DEFAULT_STYLE_SUFFIX,
    Entity,
    caption_path,
    load_metadata,
)
from catsith_sweep.data.validate import entity_problems
from catsith_sweep.data.vocab import DIRECTION_NAMES
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


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def generate_caption(entity: Entity | Mapping[str, Any], direction: int, *,
                     prefix: str = DEFAULT_STYLE_PREFIX, suffix: str = DEFAULT_STYLE_SUFFIX) -> str:
    """Caption of one sprite: `direction` is its index in the entity's files (ignored when the
    entity has one direction). Accepts an Entity or the guide's plain dict."""
    fields = entity.model_dump() if isinstance(entity, Entity) else dict(entity)
    directions = int(fields["directions"])
    body = [f"{fields['kind']} {fields['category']}"]
    if directions > 1:
        if not 0 <= direction < min(directions, len(DIRECTION_NAMES)):
            raise DatasetError(f"entity {fields.get('id', '?')}: direction {direction} is out of range "
                               f"0..{min(directions, len(DIRECTION_NAMES)) - 1}")
        body.append(DIRECTION_NAMES[direction])
    colour = color_word(fields.get("base_color"))
    if colour:
        body.append(colour)
    parts: list[str] = []
    seen: set[str] = set()
    for part in [*_split(prefix), *body, *_split(suffix)]:
        if part.casefold() not in seen:
            seen.add(part.casefold())
            parts.append(part)
    return ", ".join(parts)


def write_captions(root: Path) -> int:
    """(Re)write captions/*.txt for every file listed in metadata.json, atomically; returns the count.

    Hand-written captions are overwritten: the generator's wording is what CatSith prompts with.
    Refuses (DatasetError) when metadata.json or an entity in it is invalid.
    """
    root = Path(root)
    meta = load_metadata(root)
    problems = entity_problems(meta)
    if problems:
        raise DatasetError(problems)
    prefix, suffix = meta.captions.style_prefix, meta.captions.style_suffix
    count = 0
    for entity in meta.entities:
        for direction, name in enumerate(entity.files):
            text = generate_caption(entity, direction, prefix=prefix, suffix=suffix)
            atomic_write_bytes(caption_path(root, name), (text + "\n").encode("utf-8"))
            count += 1
    return count
