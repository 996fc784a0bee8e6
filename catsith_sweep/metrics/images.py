"""Image plumbing shared by metrics, sample grids and the sprite feature network.

Sprites are RGBA with straight (not premultiplied) alpha, as PNG stores them, in float [0, 1] with
shape (N, 4, H, W). Pixel art must never be smoothed: every resize here is nearest neighbour.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# CatSith draws exospace sprites over a black star field, so compositing on black measures what a
# player sees: a transparent pixel and an opaque black one look the same in the game, and do here.
DEFAULT_BACKGROUND: tuple[int, int, int] = (0, 0, 0)

# Grey checkerboard behind transparency in sample grids, the convention of image editors.
_CHECKER_LIGHT = (204, 204, 204)
_CHECKER_DARK = (153, 153, 153)
_GRID_BACKGROUND = (32, 32, 32)
_TEXT_COLOUR = (230, 230, 230)
_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont
# Smallest side of a grid cell: 64 px sprites are drawn at 128 px, 32 px ones at 96 px.
MIN_CELL = 96


def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """Return images as float32 in [0, 1]: uint8 is divided by 255, floats are only cast."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float()


def background_unit(background: Sequence[int | float]) -> tuple[float, float, float]:
    """An (r, g, b) colour as floats in [0, 1].

    Two conventions live in this code base, told apart by type: ints are 0..255 (like the base colours
    of `data.vocab`), floats are already in [0, 1] (like `trainers.diffusion.RGB_BACKGROUND`).
    """
    if len(background) != 3:
        raise ValueError(f"background must be (r, g, b), got {tuple(background)}")
    if all(isinstance(c, int) for c in background):
        unit = tuple(float(c) / 255.0 for c in background)
    else:
        unit = tuple(float(c) for c in background)
    if not all(0.0 <= c <= 1.0 for c in unit):
        raise ValueError(f"background {tuple(background)} is out of range (ints 0..255 or floats 0..1)")
    return unit[0], unit[1], unit[2]


def composite_rgba(
    images: torch.Tensor, background: Sequence[int | float] = DEFAULT_BACKGROUND
) -> torch.Tensor:
    """Composite straight-alpha RGBA images (N, 4, H, W) over a solid colour, giving (N, 3, H, W).

    `background` is (r, g, b): ints in 0..255 or floats in [0, 1] (see `background_unit`); the default
    is black (see DEFAULT_BACKGROUND). uint8 input is accepted; the result is float32 in [0, 1].
    Three-channel input is returned as float unchanged, so callers can pass either form.
    """
    if images.dim() != 4 or images.shape[1] not in (3, 4):
        raise ValueError(f"expected images of shape (N, 3 or 4, H, W), got {tuple(images.shape)}")
    images = to_float_images(images)
    if images.shape[1] == 3:
        return images
    rgb, alpha = images[:, :3], images[:, 3:4].clamp(0.0, 1.0)
    bg = torch.tensor(background_unit(background), dtype=images.dtype, device=images.device)
    return rgb * alpha + bg.view(1, 3, 1, 1) * (1.0 - alpha)


def _nearest_indices(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    # Centre-aligned nearest ("nearest-exact", PIL's NEAREST): integer factors repeat each pixel
    # exactly, and non-integer factors do not drift by half a pixel as torch's legacy "nearest" does.
    idx = ((torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * n_in / n_out).floor()
    return idx.long().clamp_(0, n_in - 1)


def upscale_nearest(images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize (N, C, H, W) or (C, H, W) images to `size` (square int or (h, w)) by nearest neighbour.

    Implemented as an index gather, so every output pixel is an exact copy of an input pixel and the
    dtype is kept (uint8 stays uint8): pixel art keeps its palette. Downscaling works the same way.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    rows = _nearest_indices(images.shape[-2], out_h, images.device)
    cols = _nearest_indices(images.shape[-1], out_w, images.device)
    return images.index_select(-2, rows).index_select(-1, cols)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
