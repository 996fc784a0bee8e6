"""Sample grids: sprites drawn large (nearest neighbour) over a checkerboard, labelled, saved as PNG.

The tensor conventions (straight-alpha RGBA, compositing, nearest resize) are in `data.pixels`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from catsith_sweep.data.pixels import to_float_images, upscale_nearest
from catsith_sweep.io import atomic_path

# Grey checkerboard behind transparency in sample grids, the convention of image editors.
_CHECKER_LIGHT = (204, 204, 204)
_CHECKER_DARK = (153, 153, 153)
_GRID_BACKGROUND = (32, 32, 32)
_TEXT_COLOUR = (230, 230, 230)
_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont
# Smallest side of a grid cell: 64 px sprites are drawn at 128 px, 32 px ones at 96 px.
MIN_CELL = 96


def _checkerboard(height: int, width: int, cell: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    light = ((yy // cell + xx // cell) % 2 == 0)[..., None]
    return np.where(light, np.array(_CHECKER_LIGHT), np.array(_CHECKER_DARK)).astype(np.float32) / 255.0


def _cell_image(image: torch.Tensor, side: int, checker_cell: int) -> Image.Image:
    """One sprite (C, H, W) upscaled by nearest neighbour to side x side, over a checkerboard."""
    image = upscale_nearest(to_float_images(image.detach().cpu()).clamp(0.0, 1.0), side)
    arr = image.permute(1, 2, 0).numpy()
    if arr.shape[2] == 4:
        board = _checkerboard(side, side, checker_cell)
        alpha = arr[..., 3:4]
        arr = arr[..., :3] * alpha + board * (1.0 - alpha)
    return Image.fromarray((arr * 255.0).round().astype(np.uint8), "RGB")


def _wrap(text: str, font: _Font, width: int) -> list[str]:
    """Greedy word wrap of `text` to lines no wider than `width` pixels.

    A word wider than a line is cut by characters, so a long trial name never spills into the next
    column.
    """
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
            continue
        while len(word) > 1 and font.getlength(word) > width:
            cut = next(i for i in range(len(word), 0, -1) if i == 1 or font.getlength(word[:i]) <= width)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines or [""]


def _check_grid_args(images: torch.Tensor, rows: Sequence[str], columns: int,
                     reference: torch.Tensor | None, column_labels: Sequence[str] | None) -> None:
    if images.dim() != 4 or images.shape[1] not in (3, 4):
        raise ValueError(f"expected images of shape (N, 3 or 4, H, W), got {tuple(images.shape)}")
    if columns < 1 or not rows or images.shape[0] != len(rows) * columns:
        raise ValueError(
            f"got {images.shape[0]} images for {len(rows)} rows x {columns} columns; "
            "images are row-major, one row per label"
        )
    if reference is not None and (reference.dim() != 4 or reference.shape[0] != len(rows)):
        raise ValueError(f"reference must hold one image per row ({len(rows)}), got {tuple(reference.shape)}")
    if column_labels is not None and len(column_labels) != columns:
        raise ValueError(f"got {len(column_labels)} column labels for {columns} columns")


def _draw_header(draw: ImageDraw.ImageDraw, headers: list[list[str]], font: _Font, side: int, padding: int,
                 line_h: int) -> None:
    """Draw each column's wrapped header at the top, above its column."""
    for c, lines in enumerate(headers):
        for i, line in enumerate(lines):
            draw.text((padding + c * (side + padding), padding + i * line_h), line, fill=_TEXT_COLOUR,
                      font=font)


def make_grid_png(
    images: torch.Tensor,
    *,
    rows: list[str],
    columns: int,
    reference: torch.Tensor | None = None,
    column_labels: Sequence[str] | None = None,
    min_cell: int = MIN_CELL,
    padding: int = 4,
    checker_cell: int = 8,
) -> Image.Image:
    """A labelled sample grid as an RGB PIL image, ready for `save_png_atomic` or an experiment tracker.

    `images` (len(rows) * columns, 3|4, H, W) in [0, 1] are row-major: row r holds the `columns` samples
    of prompt `rows[r]`, whose text is drawn (PIL's default font, wrapped) above the row. With
    `reference` (one image per row), a "ground truth" column comes first; `column_labels` (one per
    sample column, e.g. trial names) are drawn above the columns. Every sprite is enlarged by nearest
    neighbour by an integer factor to at least `min_cell` pixels, so pixel art stays crisp and small
    sprites stay visible, and is drawn over a grey checkerboard where it is transparent.
    """
    _check_grid_args(images, rows, columns, reference, column_labels)
    side = max(images.shape[-2], images.shape[-1])
    side *= max(1, math.ceil(min_cell / side))
    font = ImageFont.load_default()
    n_cols = columns + (reference is not None)
    width = padding + n_cols * (side + padding)
    line_h = _text_height(font)
    headers = (["ground truth"] if reference is not None else []) + list(column_labels or [""] * columns)
    wrapped_headers = [_wrap(text, font, side) for text in headers] if any(headers) else []
    labels = [_wrap(text, font, width - 2 * padding) for text in rows]
    header_h = max((len(lines) for lines in wrapped_headers), default=0) * line_h
    header_h += padding if header_h else 0
    height = padding + header_h + sum(len(lines) * line_h + side + 2 * padding for lines in labels)
    grid = Image.new("RGB", (width, height), _GRID_BACKGROUND)
    draw = ImageDraw.Draw(grid)
    _draw_header(draw, wrapped_headers, font, side, padding, line_h)
    y = padding + header_h
    for r, lines in enumerate(labels):
        for line in lines:
            draw.text((padding, y), line, fill=_TEXT_COLOUR, font=font)
            y += line_h
        y += padding
        row_images = list(images[r * columns:(r + 1) * columns])
        if reference is not None:
            row_images.insert(0, reference[r])
        for c, image in enumerate(row_images):
            grid.paste(_cell_image(image, side, checker_cell), (padding + c * (side + padding), y))
        y += side + padding
    return grid


def _text_height(font: _Font) -> int:
    """Line height of `font`: its tallest glyph box plus a little leading."""
    top, bottom = font.getbbox("Hg")[1::2]
    return int(bottom - top) + 4


def save_png_atomic(image: Image.Image, path: str | Path) -> Path:
    """Save a PIL image as PNG so that readers never see a half-written file (temp file + rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
