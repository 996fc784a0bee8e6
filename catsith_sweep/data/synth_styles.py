"""Art styles of the builtin synthetic sprite set.

A style changes how the same designs are coloured and captioned, never their shapes or labels: every
style of a seed has the same alpha masks, kinds and directions, so the sprite feature network and the
kind/direction accuracies apply to all of them. The builtin base is trained on `16bit`.

- `handheld`: a four-shade green palette in the manner of early handheld consoles (the guide's "quick
  style adaptation"). The first builtin base's tiny VAE decoded those greens as the oranges and browns it
  was trained on, so no UNet LoRA could reach it.
- `neon`: the look the `lora_style` demo adapts the base to. Why this one: a UNet LoRA only changes
  which latents are generated, and every sprite is decoded by the base's frozen VAE, so the new look
  must differ in what a small VAE keeps (palette, shading, outline) rather than in sub-pixel detail
  (dithering, 1-px patterns, which a 8x downsampling VAE blurs away whatever the LoRA learns). `neon`
  keeps the 16-bit set's shading structure (each colour's HSV value, so rim light and rim shade still
  read) and changes what a viewer and a colour histogram see first:
  * every hue turned to its complement (fighters green -> magenta, bombers orange -> blue, asteroids
    brown -> steel blue, engine glow orange -> electric blue), so each kind's colour differs from the
    base's and the kind <-> colour association a LoRA must learn is new;
  * saturation raised (+NEON_SATURATION_BOOST), the saturated look of neon signs;
  * every dark edge (outline, value < OUTLINE_VALUE) drawn in one near-black violet (NEON_OUTLINE),
    where 16bit tints each outline with its sprite's colour;
  * greys (stations, debris) tinted violet (NEON_GREY_HUE), whites kept white.
  It is deterministic (a fixed per-colour function), and measured against `16bit` in
  tests/test_synth_styles.py (mean colour distance over opaque pixels: 145 of 441).
  Reachability, measured with metrics/vae_fit.py: the first builtin base's VAE architecture, trained
  600 steps on `16bit` (seed 0) as `base build` does, round-trips held-out `16bit` designs (seed 1)
  with a colour error of 26/255, `handheld` 50/255 and `neon` 55/255: it paints each shape in the
  colours it learned for it. So `neon` needs a base whose VAE generalises across palettes (issue 11
  section 3); check a base with `dataset fit` before sweeping LoRAs to this style.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from catsith_sweep.data.metadata import DEFAULT_STYLE_SUFFIX

# Darkest to lightest: the four shades of a classic handheld LCD.
HANDHELD_SHADES = np.array([(15, 56, 15), (48, 98, 48), (139, 172, 15), (155, 188, 15)], dtype=float)

NEON_OUTLINE = (26, 10, 46)
"""The one outline colour of `neon`: near-black violet."""
OUTLINE_VALUE = 0.25
"""HSV value below which a 16-bit colour is an edge (outline b*0.22, dark b*0.4 of a dark base)."""
NEON_SATURATION_BOOST = 0.25
NEON_GREY_HUE, NEON_GREY_SATURATION = 275.0, 0.3
GREY_SATURATION, WHITE_VALUE = 0.18, 0.9
"""Below GREY_SATURATION a colour is grey (tinted violet in `neon`) or, from WHITE_VALUE up, white."""


@dataclass(frozen=True)
class SynthStyle:
    metadata_style: str
    """`style` written to metadata.json."""
    caption_suffix: str
    """`captions.style_suffix` written to metadata.json (the guide's words for `16bit`)."""
    recolour: Callable[[np.ndarray], np.ndarray]
    """Maps (n x 3) RGB colours of the 16-bit palette to this style's, row by row (each colour alone:
    synth.py also recolours an entity's base_color with it)."""


def _same(table: np.ndarray) -> np.ndarray:
    return table


def _handheld(table: np.ndarray) -> np.ndarray:
    # Rec. 601 luma, cut into four equal bands: dark outlines stay darkest, highlights lightest.
    luma = table @ np.array([0.299, 0.587, 0.114])
    band = np.clip((luma / 64.0).astype(int), 0, 3)
    return HANDHELD_SHADES[band]


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1] of (..., 3) RGB in 0..255."""
    rgb = np.asarray(rgb, dtype=float) / 255
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = rgb.max(axis=-1)
    chroma = value - rgb.min(axis=-1)
    saturation = np.where(value > 0, chroma / np.where(value > 0, value, 1), 0.0)
    safe = np.where(chroma > 0, chroma, 1)
    sector = np.where(value == r, ((g - b) / safe) % 6,
                      np.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return np.where(chroma > 0, sector * 60, 0.0), saturation, value


def hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """(..., 3) RGB in 0..255 (float) of hue in degrees, saturation and value in [0, 1]."""
    h = (np.asarray(hue, dtype=float) % 360) / 60
    sector = np.floor(h).astype(int) % 6
    f = h - np.floor(h)
    v, s = np.asarray(value, dtype=float), np.asarray(saturation, dtype=float)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    options = [np.stack(c, axis=-1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    return np.choose(np.repeat(sector[..., None], 3, axis=-1), options) * 255


def _neon(table: np.ndarray) -> np.ndarray:
    hue, saturation, value = rgb_to_hsv(table)
    grey = saturation < GREY_SATURATION
    hue = np.where(grey, NEON_GREY_HUE, hue + 180)
    saturation = np.where(grey, np.where(value >= WHITE_VALUE, saturation, NEON_GREY_SATURATION),
                          np.minimum(1.0, saturation + NEON_SATURATION_BOOST))
    out = hsv_to_rgb(hue, saturation, value)
    out[value < OUTLINE_VALUE] = NEON_OUTLINE
    return out


STYLES: dict[str, SynthStyle] = {
    "16bit": SynthStyle("pixel_art_16bit", DEFAULT_STYLE_SUFFIX, _same),
    "handheld": SynthStyle("pixel_art_handheld", ", transparent background, handheld style",
                           _handheld),
    "neon": SynthStyle("pixel_art_neon", ", transparent background, neon style, dark outline", _neon),
}


def get_style(name: str) -> SynthStyle:
    """The style called `name`, or a ValueError that lists the known ones."""
    if name not in STYLES:
        raise ValueError(f"synth style {name!r} is unknown; expected one of: {', '.join(STYLES)}")
    return STYLES[name]
