"""The builtin procedural exospace sprite set, in the guide's dataset layout.

Every sprite is painted as a LABEL map (hull, glass, glow, ...) on a low-resolution grid (32x32, or
16x16 below 32 px), so that shapes stay bold and pixel-crisp. Ships are designed facing up, rotated into
the 8 directions on that grid by nearest-neighbour sampling, and only then outlined and rim-lit (light
from the top-left of the screen, as a player sees it), so every direction reads as the same lit ship.
The label map is coloured from the kind's base colour, upscaled by an integer nearest factor, and saved
with hard alpha (0 or 255). Kinds differ by silhouette; variants by proportions and accent colour.

Designs are drawn in "design units": a 32x32 square, centre (16, 16). Everything a ship draws stays
within about 14 units of the centre, so no rotation clips it and the outline still fits.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from catsith_sweep.data import vocab
from catsith_sweep.data.captions import COLOR_RULES, ColorRule, write_captions
from catsith_sweep.data.metadata import IMAGES_DIR, Captions, Entity, Metadata, write_metadata
from catsith_sweep.data.synth_shapes import (
    ACCENT,
    DARK,
    EMPTY,
    GLASS,
    GLOW,
    HULL,
    LIGHT,
    NO_OUTLINE,
    OUTLINE,
    PAINTERS,
    SHADE,
    WHITE,
    Canvas,
    Painter,
)
from catsith_sweep.data.synth_styles import SynthStyle, get_style
from catsith_sweep.data.validate import DatasetReport, validate_dataset
from catsith_sweep.errors import DatasetError
from catsith_sweep.io import atomic_path, staged_dir

ACCENTS = ((235, 235, 245), (210, 60, 50), (60, 66, 84), (245, 205, 70))

# Environment objects have no vocabulary colour; these are their base colours (variants may vary).
ENV_COLORS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "asteroid": ((136, 112, 92), (120, 110, 104), (150, 124, 96)),
    "debris": ((118, 124, 140),),
    "station": ((152, 158, 170),),
    "portal": ((150, 70, 230), (60, 170, 230)),
    "nebula": ((210, 90, 170), (100, 110, 225), (90, 190, 160)),
    "star": ((255, 222, 110), (150, 200, 255), (255, 150, 90)),
    "planet": ((70, 130, 210), (205, 112, 70), (90, 170, 100), (196, 176, 120)),
}




# ---- rotation, outline, light, colour -------------------------------------------------------------
def rotate_labels(labels: np.ndarray, direction: int) -> np.ndarray:
    """Rotate a G x G label map clockwise by direction * 45 degrees, nearest neighbour."""
    quarter, odd = divmod(direction % 8, 2)
    if odd:
        g = labels.shape[0]
        centre = (np.arange(g) + 0.5) - g / 2
        x, y = np.meshgrid(centre, centre)
        s = math.sqrt(0.5)
        # Inverse of a clockwise screen rotation: the source pixel of each output pixel.
        sx = np.floor(x * s + y * s + g / 2).astype(int)
        sy = np.floor(-x * s + y * s + g / 2).astype(int)
        inside = (sx >= 0) & (sx < g) & (sy >= 0) & (sy < g)
        rotated = np.zeros_like(labels)
        rotated[inside] = labels[sy[inside], sx[inside]]
        labels = rotated
    return np.rot90(labels, k=-quarter).copy()


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """mask shifted by (dy, dx), padding with False."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def finish(labels: np.ndarray, *, outline: bool = True) -> np.ndarray:
    """Rim light (top-left) and rim shade (bottom-right) on the hull, then a 1-cell outline."""
    out = labels.copy()
    empty = labels == EMPTY
    hull = labels == HULL
    lit = hull & (_shift(empty, 1, 0) | _shift(empty, 0, 1))       # empty above or to the left
    shaded = hull & (_shift(empty, -1, 0) | _shift(empty, 0, -1))  # empty below or to the right
    out[shaded] = SHADE
    out[lit & ~shaded] = LIGHT
    if outline:
        solid = ~empty
        edge = empty & (_shift(solid, 1, 0) | _shift(solid, -1, 0) | _shift(solid, 0, 1) | _shift(solid, 0, -1))
        out[edge] = OUTLINE
    return out


def palette(base: tuple[int, int, int], accent: tuple[int, int, int]) -> np.ndarray:
    """RGB per label, derived from the sprite's base colour."""
    b = np.array(base, dtype=float)
    colours = {
        OUTLINE: b * 0.22, HULL: b, SHADE: b * 0.62, LIGHT: b + (255 - b) * 0.45,
        GLASS: (150, 225, 255), GLOW: (255, 190, 60), ACCENT: accent, WHITE: (255, 252, 235),
        DARK: b * 0.4,
    }
    table = np.zeros((10, 3))
    for label, rgb in colours.items():
        table[label] = np.asarray(rgb, dtype=float)
    return np.clip(np.rint(table), 0, 255).astype(np.uint8)


def render(labels: np.ndarray, colours: np.ndarray, size: int) -> np.ndarray:
    """Colour a label map, upscale it by an integer nearest factor, centre it on a size x size canvas."""
    g = labels.shape[0]
    rgba = np.zeros((g, g, 4), dtype=np.uint8)
    rgba[..., :3] = colours[labels]
    rgba[..., 3] = np.where(labels == EMPTY, 0, 255)
    rgba[labels == EMPTY, :3] = 0
    scale = size // g
    big = rgba.repeat(scale, axis=0).repeat(scale, axis=1)
    out = np.zeros((size, size, 4), dtype=np.uint8)
    pad = (size - g * scale) // 2
    out[pad:pad + g * scale, pad:pad + g * scale] = big
    return out


# ---- the dataset ----------------------------------------------------------------------------------
def _grid_for(size: int) -> int:
    if size < 16:
        raise DatasetError(f"size {size}: expected at least 16 px for synthetic sprites")
    return 32 if size >= 32 else 16


def _sprite_rng(seed: int, category: str, kind: str, variant: int) -> np.random.Generator:
    # One stream per sprite design, so adding variants or kinds never changes existing designs.
    return np.random.default_rng([seed, vocab.CATEGORIES.index(category),
                                  vocab.kind_label(category, kind), variant])


def _base_color(category: str, kind: str, rng: np.random.Generator) -> tuple[int, int, int]:
    if category == "environment":
        options = ENV_COLORS[kind]
        return options[int(rng.integers(len(options)))]
    return vocab.BASE_COLORS[f"{category}/{kind}"]


def _restyle(style: SynthStyle, table: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(style.recolour(np.asarray(table, dtype=float))), 0, 255).astype(np.uint8)


def _write_category(images: Path, category: str, painters: dict[str, Painter], seed: int, size: int,
                    variants: int, style: SynthStyle) -> list[Entity]:
    """Paint and save every variant of every kind of a category; ships in 8 directions."""
    directions = vocab.DIRECTIONS_BY_CATEGORY[category]
    prefix = "ship" if category == "vehicle" else category
    entities = []
    for kind, painter in painters.items():
        for v in range(variants):
            rng = _sprite_rng(seed, category, kind, v)
            base = _base_color(category, kind, rng)
            # The painted hull: the base colour a little lighter or darker per variant.
            shade = rng.uniform(0.9, 1.1)
            r, g, b = (min(255, round(c * shade)) for c in base)
            colours = _restyle(style, palette((r, g, b), ACCENTS[int(rng.integers(len(ACCENTS)))]))
            canvas = Canvas(_grid_for(size))
            painter(canvas, rng)
            files = []
            for d in range(directions):
                name = f"{prefix}_{kind}_v{v}" + (f"_{d}.png" if directions > 1 else ".png")
                labels = finish(rotate_labels(canvas.labels(), d), outline=kind not in NO_OUTLINE)
                Image.fromarray(render(labels, colours, size), "RGBA").save(images / name, format="PNG")
                files.append(name)
            entities.append(Entity(id=f"{prefix}_{kind}_v{v}", category=category, kind=kind,
                                   directions=directions, files=files,
                                   base_color=tuple(int(c) for c in _restyle(style, np.array([base]))[0])))
    return entities


def synth_dataset(out: Path, *, seed: int = 0, size: int = 64, variants: int = 3,
                  style: str = "16bit", caption_colors: ColorRule = "guide") -> DatasetReport:
    """Write the procedural exospace set to `out` (which must not exist, or be an empty folder).

    6 ship kinds x `variants` designs x 8 directions, 6 projectile and 7 environment kinds x
    `variants`, coloured and captioned in `style` (see synth_styles.py), the captions' colour words by
    `caption_colors` (captions.COLOR_RULES). Same arguments give the same bytes. The set is built in
    a temporary folder beside `out` and renamed into place, so `out` is either complete or absent.
    """
    out = Path(out)
    problems = []
    try:
        chosen = get_style(style)
    except ValueError as exc:
        problems.append(str(exc))
    if caption_colors not in COLOR_RULES:
        problems.append(f"caption colours {caption_colors!r}: expected one of {', '.join(COLOR_RULES)}")
    if variants < 1:
        problems.append(f"variants {variants}: expected at least 1 design per kind")
    try:
        _grid_for(size)
    except DatasetError as exc:
        problems += exc.problems
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        problems.append(f"{out}: already exists and is not an empty folder; choose a new output folder")
    if problems:
        raise DatasetError(problems)
    with staged_dir(out, replace=False) as tmp:  # `out` is absent or empty, checked above
        (tmp / IMAGES_DIR).mkdir()
        entities = [entity for category, painters in PAINTERS.items()
                    for entity in _write_category(tmp / IMAGES_DIR, category, painters, seed, size, variants, chosen)]
        write_metadata(tmp, Metadata(version="1.0", style=chosen.metadata_style, entities=entities,
                                     captions=Captions(style_suffix=chosen.caption_suffix)))
        write_captions(tmp, colors=caption_colors)
        validate_dataset(tmp, size=size)  # a bug here must never reach a training run
    return validate_dataset(out, size=size)


def contact_sheet(root: Path, out_png: Path, *, columns: int = 8, min_tile: int = 64) -> None:
    """Tile every sprite of a dataset on a checkerboard (one row per directional entity), upscaled by
    an integer nearest factor so small sprites stay crisp; written atomically."""
    from catsith_sweep.data.validate import inspect_dataset

    checked = inspect_dataset(Path(root))
    size = checked.report.size
    scale = max(1, -(-min_tile // size))
    tile, gap = size * scale, 4
    rows: list[list[np.ndarray]] = []
    loose: list[np.ndarray] = []
    for e, ent in enumerate(checked.metadata.entities):
        sprites = [s.pixels for s in checked.sprites if s.entity == e]
        if ent.directions > 1:
            rows.append(sprites)
        else:
            loose += sprites
    rows += [loose[i:i + columns] for i in range(0, len(loose), columns)]
    width = max(columns, *(len(r) for r in rows)) if rows else columns
    sheet = Image.new("RGB", (width * (tile + gap) + gap, len(rows) * (tile + gap) + gap), (40, 40, 48))
    yy, xx = np.mgrid[0:tile, 0:tile]
    board = np.where(((yy // 8 + xx // 8) % 2)[..., None] == 0, 200, 150).astype(np.uint8).repeat(3, 2)
    for r, row in enumerate(rows):
        for c, pixels in enumerate(row):
            big = pixels.repeat(scale, 0).repeat(scale, 1).astype(float)
            alpha = big[..., 3:] / 255.0
            rgb = big[..., :3] * alpha + board * (1 - alpha)
            sheet.paste(Image.fromarray(rgb.astype(np.uint8), "RGB"), (gap + c * (tile + gap), gap + r * (tile + gap)))
    with atomic_path(out_png) as tmp:
        sheet.save(tmp, format="PNG")
