"""Art styles of the builtin synthetic sprite set.

A style changes how the same designs are coloured and captioned, never their shapes or labels. The
builtin base is trained on `16bit`; `handheld`, a four-shade green palette in the manner of early
handheld consoles, gives a style LoRA something real to learn (the guide's "quick style adaptation")
on a base whose VAE can represent it. The builtin base's tiny VAE cannot: it decodes those greens as
the oranges and browns it was trained on, which is why the demo sweep does not use this style.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from catsith_sweep.data.metadata import DEFAULT_STYLE_SUFFIX

# Darkest to lightest: the four shades of a classic handheld LCD.
HANDHELD_SHADES = np.array([(15, 56, 15), (48, 98, 48), (139, 172, 15), (155, 188, 15)], dtype=float)


@dataclass(frozen=True)
class SynthStyle:
    metadata_style: str
    """`style` written to metadata.json."""
    caption_suffix: str
    """`captions.style_suffix` written to metadata.json (the guide's words for `16bit`)."""
    recolour: Callable[[np.ndarray], np.ndarray]
    """Maps a (labels x 3) RGB table of the 16-bit palette to this style's table."""


def _same(table: np.ndarray) -> np.ndarray:
    return table


def _handheld(table: np.ndarray) -> np.ndarray:
    # Rec. 601 luma, cut into four equal bands: dark outlines stay darkest, highlights lightest.
    luma = table @ np.array([0.299, 0.587, 0.114])
    band = np.clip((luma / 64.0).astype(int), 0, 3)
    return HANDHELD_SHADES[band]


STYLES: dict[str, SynthStyle] = {
    "16bit": SynthStyle("pixel_art_16bit", DEFAULT_STYLE_SUFFIX, _same),
    "handheld": SynthStyle("pixel_art_handheld", ", transparent background, handheld style",
                           _handheld),
}


def get_style(name: str) -> SynthStyle:
    """The style called `name`, or a ValueError that lists the known ones."""
    if name not in STYLES:
        raise ValueError(f"synth style {name!r} is unknown; expected one of: {', '.join(STYLES)}")
    return STYLES[name]
