"""Import a user's sprite sheet (a frame strip, a grid, a rotation sheet) into the guide's layout.

Sheets come as they come (field-notes.md): PNG, BMP, GIF (first frame), XPM, palette images, with a
colour-keyed background instead of alpha, frames from 10 to 120 px. Frames are read row by row, the
key colour becomes alpha 0, each frame is padded to a square (centred, transparent) and nearest-scaled
to `size`, so pixel edges stay hard.

Colour keys:
- an explicit colour (`(r, g, b)`, `--color-key 255,0,255`) clears every pixel of exactly that colour:
  the classic colour key, where the key colour inside a sprite is meant to be a hole.
- `auto` takes the top-left pixel's colour as the background and clears it only where it is connected
  (4-neighbours) to the border of its frame: black outlines and cockpits inside a sprite on a black
  sheet stay. A clean background (frame borders match the key exactly) is keyed exactly; a noisy one
  (a JPEG) within AUTO_KEY_TOLERANCE per channel, so its background goes too.
  A warning is given when less than half of the frames' border pixels were keyed.
- 16-bit greyscale sheets are scaled to 8 bits (not clipped at 255).

Decisions:
- directions=8 (a rotation sheet of N frames, N a multiple of 8): frame 0 faces `first_direction`, the
  frames turn clockwise (or counter-clockwise) by 360/N degrees each, and direction d takes the frame
  that faces it; the other frames are skipped. Files: `<id>_<d>.png`.
- directions=1: every frame is a file of ONE entity (`<id>.png`, or `<id>_<j>.png` for several), so an
  animation or a set of poses stays on one side of the train/validation split.
- without `frames`, fully transparent cells at the END of a grid (unused cells) are dropped.
- the default id is `<ship|projectile|environment>_<kind>_<sheet stem>`; a duplicate id is refused,
  so importing the same sheet twice fails instead of doubling it.
- base_color, unless given, is the mean RGB of the opaque pixels: the caption's colour words then
  describe this sprite, not the vocabulary's default colour for the kind.
"""

from __future__ import annotations

import io
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from catsith_sweep.data import vocab
from catsith_sweep.data.captions import COLOR_RULES, ColorRule, caption_path, generate_caption
from catsith_sweep.data.metadata import (
    IMAGES_DIR,
    METADATA_NAME,
    Entity,
    Metadata,
    load_metadata,
    write_metadata,
)
from catsith_sweep.data.validate import ALLOWED_DIRECTIONS, DatasetReport, inspect_dataset, validate_dataset
from catsith_sweep.errors import DatasetError, quote, shorten
from catsith_sweep.io import atomic_write_bytes
from catsith_sweep.user_input import UnreadableFile, open_regular_file

ColorKey = tuple[int, int, int] | str | None
ID_PREFIX = {"vehicle": "ship", "projectile": "projectile", "environment": "environment"}
MAX_SPRITE_SIZE = 1024  # the largest `data.resolution` a config accepts
MAX_SHEET_PIXELS = 32 << 20  # 32 Mpx: 128 MB as RGBA; larger sheets are refused before decoding
MAX_SHEET_BYTES = 256 << 20
MAX_FRAME_SIDE = 4096  # a frame is padded to a square: 4096 px is 64 MB as RGBA
AUTO_KEY_TOLERANCE = 40  # per channel; JPEG noise on a flat background stays well inside it
_SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgba(img: Image.Image) -> np.ndarray:
    """H x W x 4 uint8; 16-bit (and 32-bit int) greyscale is scaled from 0..65535, not clipped."""
    if img.mode in _SIXTEEN_BIT_GREY:
        grey = np.asarray(img).astype(np.int64)
        grey = (np.clip(grey, 0, 65535) * 255 + 32767) // 65535
        img = Image.fromarray(grey.astype(np.uint8), "L")
    return np.asarray(img.convert("RGBA")).copy()


def _load_sheet(sheet: Path) -> np.ndarray:
    """The sheet as H x W x 4 uint8 RGBA; its size is checked from the header before decoding."""
    try:
        handle = open_regular_file(sheet, max_bytes=MAX_SHEET_BYTES, what="sprite sheet")
    except UnreadableFile as exc:
        if str(exc) == "file not found":
            raise DatasetError(f"{sheet}: missing sprite sheet") from None
        raise DatasetError(f"{sheet}: {exc}") from None
    try:
        with warnings.catch_warnings():
            # PIL warns about > 89 Mpx at open; our own bound (checked next, before decoding) is lower.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with handle, Image.open(handle) as img:
                width, height = img.size
                if width * height > MAX_SHEET_PIXELS:
                    raise DatasetError(f"{sheet}: {width}x{height} px is over {MAX_SHEET_PIXELS:,} pixels; cut "
                                       "the sheet into smaller ones (it was not decoded)")
                img.seek(0)  # an animated GIF: its first frame
                return _to_rgba(img)
    except DatasetError:
        raise
    except Image.DecompressionBombError as exc:  # PIL refuses the header first above ~179 Mpx
        raise DatasetError(f"{sheet}: the image is over {MAX_SHEET_PIXELS:,} pixels ({shorten(exc, limit=60)}); "
                           "cut the sheet into smaller ones (it was not decoded)") from None
    except Exception as exc:  # PIL raises many types for unreadable files (DecompressionBombError too)
        raise DatasetError(f"{sheet}: cannot read as an image ({type(exc).__name__}: {shorten(exc, limit=100)}); "
                           "expected PNG, BMP, GIF, XPM or another format PIL opens") from None


def _key_exact(rgba: np.ndarray, color_key: tuple[int, int, int]) -> None:
    if not (len(color_key) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in color_key)):
        raise DatasetError(f"color_key {quote(color_key)}: expected 'auto', None or (r, g, b) with 0-255 values")
    rgba[(rgba[..., :3] == np.array(color_key, dtype=np.uint8)).all(axis=-1), 3] = 0


def _frame_borders(height: int, width: int, fw: int, fh: int, cols: int, rows: int) -> np.ndarray:
    """Mask of the pixels on the border of some frame."""
    mask = np.zeros((height, width), dtype=bool)
    for r in range(rows):
        mask[r * fh, :cols * fw] = mask[(r + 1) * fh - 1, :cols * fw] = True
    for c in range(cols):
        mask[:rows * fh, c * fw] = mask[:rows * fh, (c + 1) * fw - 1] = True
    return mask


def _key_auto(rgba: np.ndarray, fw: int, fh: int, cols: int, rows: int) -> float:
    """Clear the top-left pixel's colour where it connects to its frame's border (see the module doc);
    returns the share of the frames' border pixels that were keyed."""
    from scipy import ndimage  # lazy: only sheets with an automatic key need it

    if rgba[0, 0, 3] == 0:
        return 1.0  # the corner is already transparent: the sheet has real alpha
    distance = np.abs(rgba[..., :3].astype(np.int16) - rgba[0, 0, :3].astype(np.int16)).max(axis=-1)
    distance[rgba[..., 3] == 0] = 255  # already transparent: nothing to key
    borders = _frame_borders(distance.shape[0], distance.shape[1], fw, fh, cols, rows)
    near_border = distance[borders] <= AUTO_KEY_TOLERANCE
    # A clean (lossless) background matches the key exactly: then so must every keyed pixel, and a dark
    # outline next to a black background survives. A noisy one (JPEG) is keyed within the tolerance.
    exact = (distance[borders] == 0).sum() >= 0.9 * near_border.sum()
    near = distance <= (0 if exact else AUTO_KEY_TOLERANCE)
    keyed = np.zeros_like(near)
    for r in range(rows):
        for c in range(cols):
            window = (slice(r * fh, (r + 1) * fh), slice(c * fw, (c + 1) * fw))
            labels, _ = ndimage.label(near[window])  # 4-connectivity
            edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
            keyed[window] = np.isin(labels, np.unique(edge[edge > 0]))
    rgba[keyed, 3] = 0
    return float(keyed[borders].mean()) if borders.any() else 1.0


def _cells(sheet: Path, width: int, height: int, frame_size: tuple[int, int] | None,
           grid: tuple[int, int] | None) -> tuple[int, int, int, int]:
    """(frame width, frame height, columns, rows) from a frame size, a grid, or both."""
    if frame_size is None and grid is None:
        raise DatasetError(f"{sheet}: give a frame size (WxH) or a grid (columns x rows) to cut it")
    if grid is not None and (grid[0] < 1 or grid[1] < 1):
        raise DatasetError(f"grid {grid[0]}x{grid[1]}: expected at least 1x1")
    if frame_size is not None and (frame_size[0] < 1 or frame_size[1] < 1):
        raise DatasetError(f"frame size {frame_size[0]}x{frame_size[1]}: expected at least 1x1 px")
    if frame_size is not None:
        fw, fh = frame_size
        cols, rows = grid if grid is not None else (width // fw, height // fh)
        if grid is None and (width % fw or height % fh):
            raise DatasetError(f"{sheet}: {width}x{height} px is not a whole number of {fw}x{fh} frames; "
                               "give --grid too to use only part of the sheet")
    else:
        assert grid is not None
        cols, rows = grid
        fw, fh = width // cols, height // rows
        if width % cols or height % rows:
            raise DatasetError(f"{sheet}: {width}x{height} px does not divide into a {cols}x{rows} grid; "
                               "give --frame-size instead")
    if max(fw, fh) > MAX_FRAME_SIDE:
        raise DatasetError(f"{sheet}: frames of {fw}x{fh} px; a frame is at most {MAX_FRAME_SIDE} px a side "
                           "(give --frame-size or --grid to cut the sheet)")
    if fw * cols > width or fh * rows > height or fw < 1 or fh < 1:
        raise DatasetError(f"{sheet}: {cols}x{rows} frames of {fw}x{fh} px do not fit in {width}x{height} px")
    return fw, fh, cols, rows


def _square(frame: np.ndarray, size: int) -> np.ndarray:
    """Pad to a square (centred, transparent), nearest-scale to size, zero RGB where transparent."""
    h, w = frame.shape[:2]
    side = max(h, w)
    square = np.zeros((side, side, 4), dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    square[top:top + h, left:left + w] = frame
    out = np.asarray(Image.fromarray(square, "RGBA").resize((size, size), Image.Resampling.NEAREST)).copy()
    out[out[..., 3] == 0, :3] = 0
    return out


def cut_frames(rgba: np.ndarray, fw: int, fh: int, cols: int, rows: int, frames: int | None) -> list[np.ndarray]:
    """Frames in reading order; without `frames`, trailing empty cells are dropped."""
    cells = [rgba[r * fh:(r + 1) * fh, c * fw:(c + 1) * fw] for r in range(rows) for c in range(cols)]
    if frames is not None:
        if not 1 <= frames <= len(cells):
            raise DatasetError(f"frames {frames}: the sheet has {len(cells)} cell(s); expected 1..{len(cells)}")
        return cells[:frames]
    while cells and not cells[-1][..., 3].any():
        cells.pop()
    return cells


def direction_frames(count: int, directions: int, first_direction: int, counter_clockwise: bool) -> list[int]:
    """For each direction d (clockwise from up), the index of the rotation frame that faces it."""
    if directions == 1:
        return list(range(count))
    if count % directions:
        raise DatasetError(f"{count} frame(s): a rotation sheet for {directions} directions needs a multiple "
                           f"of {directions} frames (use --frames to pick them)")
    step, sign = count // directions, (-1 if counter_clockwise else 1)
    return [((d - first_direction) * sign % directions) * step for d in range(directions)]


def _check_args(category: str, kind: str, directions: int, size: int, first_direction: int,
                entity_id: str | None) -> list[str]:
    problems = []
    if entity_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", entity_id):
        problems.append(f"entity id {quote(entity_id)}: expected 1-100 letters, digits, '_', '.' or '-' "
                        "(it names files)")
    kinds = vocab.KINDS_BY_CATEGORY.get(category)
    if kinds is None:
        problems.append(f"category {quote(category)}: expected one of {', '.join(vocab.CATEGORIES)}")
    elif kind not in kinds:
        problems.append(f"kind {quote(kind)}: not a {category} kind; expected one of {', '.join(kinds)}")
    allowed = ALLOWED_DIRECTIONS.get(category, (1, 8))
    if directions not in allowed:
        problems.append(f"directions {directions}: a {category} has {' or '.join(map(str, allowed))}")
    if not 8 <= size <= MAX_SPRITE_SIZE:
        problems.append(f"size {size}: expected 8 to {MAX_SPRITE_SIZE} px (the sprite size of the dataset)")
    if not 0 <= first_direction < 8:
        problems.append(f"first_direction {first_direction}: expected 0..7 (0 = up, clockwise)")
    return problems


def _open_dataset(out: Path, size: int) -> Metadata:
    """The metadata to append to: a new one for a new or empty folder, else a valid dataset's."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return Metadata(version="1.0", style="pixel_art_16bit", entities=[])
    if not (out / METADATA_NAME).is_file():
        raise DatasetError(f"{out}: exists, is not empty and has no {METADATA_NAME}; expected a dataset "
                           "folder or a new one")
    report = inspect_dataset(out).report  # refuse to append to a broken dataset
    if report.size != size:
        raise DatasetError(f"{out}: holds {report.size}x{report.size} sprites; import with size {report.size}")
    return load_metadata(out)


def _default_id(category: str, kind: str, sheet: Path) -> str:
    stem = re.sub(r"[^a-z0-9]+", "_", sheet.stem.lower()).strip("_")[:80] or "sheet"
    return f"{ID_PREFIX[category]}_{kind}_{stem}"


def _png_bytes(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def _mean_color(sprites: list[np.ndarray]) -> tuple[int, int, int] | None:
    pixels = np.concatenate([s.reshape(-1, 4) for s in sprites])
    opaque = pixels[pixels[:, 3] > 0, :3]
    if not len(opaque):
        return None
    r, g, b = (int(v) for v in np.rint(opaque.mean(axis=0)))
    return (r, g, b)


def import_sheet(sheet: Path, out: Path, *, frame_size: tuple[int, int] | None = None,
                 grid: tuple[int, int] | None = None, frames: int | None = None, category: str,
                 kind: str, entity_id: str | None = None, directions: int = 1, color_key: ColorKey = None,
                 size: int = 64, counter_clockwise: bool = False, first_direction: int = 0,
                 base_color: tuple[int, int, int] | None = None, caption_colors: ColorRule = "guide",
                 warn: Callable[[str], None] | None = None) -> DatasetReport:
    """Cut `sheet` into one new entity of the dataset at `out` (created if absent); see the module doc.
    `caption_colors`: the captions' colour rule (captions.COLOR_RULES). `warn` receives warnings
    (default: `warnings.warn`)."""
    sheet, out = Path(sheet), Path(out)
    problems = _check_args(category, kind, directions, size, first_direction, entity_id)
    if base_color is not None and not (len(base_color) == 3 and all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in base_color)):
        problems.append(f"base_color {base_color!r}: expected (r, g, b), three integers 0..255")
    if caption_colors not in COLOR_RULES:
        problems.append(f"caption colours {caption_colors!r}: expected one of {', '.join(COLOR_RULES)}")
    if problems:
        raise DatasetError(problems)
    if color_key is not None and color_key != "auto" and not isinstance(color_key, tuple):
        raise DatasetError(f"color_key {quote(color_key)}: expected 'auto', None or (r, g, b) with 0-255 values")
    rgba = _load_sheet(sheet)
    fw, fh, cols, rows = _cells(sheet, rgba.shape[1], rgba.shape[0], frame_size, grid)
    if color_key == "auto":
        keyed = _key_auto(rgba, fw, fh, cols, rows)
        if keyed < 0.5:
            r, g, b = (int(v) for v in rgba[0, 0, :3])
            (warn or (lambda m: warnings.warn(m, stacklevel=2)))(
                f"{sheet}: --color-key auto keyed only {keyed:.0%} of the frames' border pixels (background "
                f"taken from the top-left pixel, ({r}, {g}, {b})); check the result or give the colour")
    elif isinstance(color_key, tuple):
        _key_exact(rgba, color_key)
    cells = cut_frames(rgba, fw, fh, cols, rows, frames)
    if not cells:
        raise DatasetError(f"{sheet}: every frame is empty (fully transparent); check --color-key")
    picks = direction_frames(len(cells), directions, first_direction, counter_clockwise)
    sprites = [_square(cells[i], size) for i in picks]
    meta = _open_dataset(out, size)
    entity_id = entity_id or _default_id(category, kind, sheet)
    if any(e.id == entity_id for e in meta.entities):
        raise DatasetError(f"{out / METADATA_NAME}: entity id {entity_id!r} already exists; choose another id")
    names = [f"{entity_id}.png"] if len(sprites) == 1 else [f"{entity_id}_{i}.png" for i in range(len(sprites))]
    taken = [n for n in names if (out / IMAGES_DIR / n).exists()]
    if taken:
        raise DatasetError([f"{out / IMAGES_DIR / n}: already exists; choose another entity id" for n in taken])
    entity = Entity(id=entity_id, category=category, kind=kind, directions=directions,
                    base_color=_mean_color(sprites) if base_color is None else base_color, files=names)
    _write_entity(out, meta, entity, sprites, caption_colors)
    return validate_dataset(out, size=size)


def _write_entity(out: Path, meta: Metadata, entity: Entity, sprites: list[np.ndarray],
                  colors: ColorRule = "guide") -> None:
    """Images and captions first, metadata.json last (atomically): a failure leaves the old dataset."""
    created_dir = not out.exists()
    written: list[Path] = []
    try:
        for index, (name, pixels) in enumerate(zip(entity.files, sprites, strict=True)):
            for path, data in (
                (out / IMAGES_DIR / name, _png_bytes(pixels)),
                (caption_path(out, name), (generate_caption(
                    entity, index, prefix=meta.captions.style_prefix, suffix=meta.captions.style_suffix,
                    colors=colors, pixels=sprites)
                    + "\n").encode("utf-8")),
            ):
                atomic_write_bytes(path, data)
                written.append(path)
        write_metadata(out, meta.model_copy(update={"entities": [*meta.entities, entity]}))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        if created_dir:
            shutil.rmtree(out, ignore_errors=True)
        raise
