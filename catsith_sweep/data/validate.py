"""Check a dataset folder in the guide's layout and report EVERY problem at once.

Rules beyond the JSON schema (metadata.py):
- category and kind come from vocab.py; ids are unique; each image belongs to exactly one entity.
- directions: vehicles have 8 (one file per direction, clockwise from up) or 1. A 1-direction
  vehicle is allowed on purpose: a user's sheet often has a single pose, and a station may look the
  same from every side. It is treated as non-directional: no "facing" words in its caption, direction
  label -1, and augmentation may mirror it. Projectiles and environment objects have 1 direction
  (catsith-formats.md §5); a 1-direction entity may list several files (frames, variants).
- files are .png names relative to images/ (subfolders allowed); a name that is absolute, uses
  "..", or is a symlink resolving outside images/ is refused.
- every image is a PNG (signature and a full decode), RGBA, square, and of one size: `size` if
  given, else the first listed image's size; every image has a non-empty captions/<name>.txt.

Bounds, so a hostile or broken dataset is refused rather than exhausting the machine: names hold no
control characters and fit the file system (255 bytes a component); an image's size is read from its
PNG header and refused above MAX_SPRITE_SIDE before anything is decoded; files must be regular files
(a FIFO would block) inside the dataset folder (captions too: a symlinked caption must not read
another file); `validate_dataset` keeps no decoded pixels, so its memory is that of one image.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from catsith_sweep.data import vocab
from catsith_sweep.data.metadata import (
    IMAGES_DIR,
    METADATA_NAME,
    Metadata,
    caption_path,
    parse_metadata,
    raw_listing,
    read_metadata_json,
)
from catsith_sweep.errors import DatasetError, quote, shorten
from catsith_sweep.user_input import UnreadableFile, open_regular_file, read_user_bytes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_SPRITE_SIDE = 1024  # the largest `data.resolution` a config accepts
MAX_IMAGE_BYTES = 64 << 20  # a 1024 px RGBA PNG is at most ~4 MiB, even uncompressed
MAX_CAPTION_BYTES = 64 << 10
MAX_NAME_BYTES = 255  # per path component, as on every common file system
MAX_PATH_BYTES = 1024
_IHDR = struct.Struct(">I4sII")  # chunk length, b"IHDR", width, height
ALLOWED_DIRECTIONS: dict[str, tuple[int, ...]] = {"vehicle": (8, 1), "projectile": (1,), "environment": (1,)}


@dataclass(frozen=True)
class DatasetReport:
    """What a valid dataset holds; str() is the one-line summary the CLI prints."""

    root: Path
    images: int
    entities: int
    size: int
    categories: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        per = ", ".join(f"{cat} {n}" for cat, n in self.categories.items())
        return (f"{self.images} image{'s' * (self.images != 1)}, {self.entities} "
                f"entit{'ies' if self.entities != 1 else 'y'}, {self.size}x{self.size}"
                + (f" ({per})" if per else ""))


@dataclass(frozen=True)
class Sprite:
    """One listed image: its entity, its position in the entity's files, and its decoded pixels."""

    entity: int
    index: int
    name: str
    pixels: np.ndarray  # H x W x 4 uint8
    caption: str


@dataclass(frozen=True)
class CheckedDataset:
    report: DatasetReport
    metadata: Metadata
    sprites: list[Sprite]


def name_problem(name: str) -> str | None:
    """Why a `files` entry is not a safe .png name relative to images/, or None when it is."""
    path = PurePosixPath(name)
    if not name.isprintable():
        return "holds control characters (a NUL byte, a newline, ...); expected a plain file name"
    if any(len(part.encode("utf-8")) > MAX_NAME_BYTES for part in path.parts):
        return f"a path component is over {MAX_NAME_BYTES} bytes; expected names a file system can hold"
    if len(name.encode("utf-8")) > MAX_PATH_BYTES:
        return f"over {MAX_PATH_BYTES} bytes; expected a short name relative to images/"
    if "\\" in name or name != name.strip() or not name:
        return "expected a plain file name relative to images/ (no backslashes or surrounding spaces)"
    if path.is_absolute():
        return "absolute path; expected a name relative to images/ (it must stay inside the dataset folder)"
    if ".." in path.parts or "." in path.parts:
        return "leaves the dataset folder; expected a name inside images/ without '..'"
    if path.suffix.lower() != ".png":
        return "expected a .png file name"
    return None


def entity_problems(meta: Metadata) -> list[str]:
    """Problems of the entity list that need no files: vocabulary, directions, counts, names."""
    problems: list[str] = []
    if not meta.entities:
        problems.append(f"{METADATA_NAME}: entities: empty; expected at least one entity")
    ids = Counter(e.id for e in meta.entities)
    owner: dict[str, str] = {}
    for i, ent in enumerate(meta.entities):
        where = f"{METADATA_NAME}: entities[{i}] ({shorten(ent.id)})"
        if ids[ent.id] > 1:
            problems.append(f"{where}.id: duplicate entity id {quote(ent.id)} ({ids[ent.id]} entities use it)")
        kinds = vocab.KINDS_BY_CATEGORY.get(ent.category)
        if kinds is None:
            problems.append(f"{where}.category: unknown category {quote(ent.category)}; "
                            f"expected one of {', '.join(vocab.CATEGORIES)}")
        elif ent.kind not in kinds:
            problems.append(f"{where}.kind: unknown {ent.category} kind {quote(ent.kind)}; "
                            f"expected one of {', '.join(kinds)}")
        allowed = ALLOWED_DIRECTIONS.get(ent.category, (1, 8))
        if ent.directions not in allowed:
            problems.append(f"{where}.directions: {ent.directions}; a {ent.category} has "
                            f"{' or '.join(map(str, allowed))} direction(s)")
        elif ent.directions > 1 and len(ent.files) != ent.directions:
            problems.append(f"{where}.files: {len(ent.files)} file(s); a directional entity lists exactly "
                            f"{ent.directions}, one per direction clockwise from up")
        for j, name in enumerate(ent.files):
            why = name_problem(name)
            if why:
                problems.append(f"{where}.files[{j}]: {quote(name)}: {why}")
            elif name in owner:
                problems.append(f"{where}.files[{j}]: images/{name} is already listed by entity "
                                f"{shorten(owner[name])}")
            else:
                owner[name] = ent.id
    return problems


def _png_size(head: bytes) -> tuple[tuple[int, int] | None, str | None]:
    """(width, height) from the first 24 bytes of a PNG (signature and IHDR), or why they are wrong."""
    if not head.startswith(PNG_SIGNATURE):
        return None, "not a PNG file (bad signature); expected an RGBA PNG"
    if len(head) < 24:
        return None, "corrupt PNG (truncated before its IHDR header)"
    _, chunk, width, height = _IHDR.unpack(head[8:24])
    if chunk != b"IHDR":
        return None, "corrupt PNG (its first chunk is not IHDR)"
    return (width, height), None


def _decode(path: Path, keep_pixels: bool) -> tuple[tuple[int, int] | None, np.ndarray | None, str | None]:
    """(size, pixels, why unusable) of one PNG. The size comes from the header, and an image over
    MAX_SPRITE_SIDE is refused before decoding (a 12000 px PNG would need 0.5 GB decoded)."""
    try:
        handle = open_regular_file(path, max_bytes=MAX_IMAGE_BYTES, what="PNG image")
    except UnreadableFile as exc:
        return None, None, str(exc)
    with handle:
        size, why = _png_size(handle.read(24))
        if size is None:
            return None, None, why
        if max(size) > MAX_SPRITE_SIDE:
            return None, None, (f"{size[0]}x{size[1]} px; sprites are at most {MAX_SPRITE_SIDE}x{MAX_SPRITE_SIDE} "
                                "(not decoded)")
        handle.seek(0)
        try:
            with Image.open(handle, formats=["PNG"]) as img:
                mode = img.mode
                if mode != "RGBA":
                    return size, None, f"mode {mode}; expected RGBA (8-bit with an alpha channel)"
                img.load()
                pixels = np.asarray(img).copy() if keep_pixels else None
        except Exception as exc:  # PIL raises many types for truncated or corrupt data
            return size, None, f"corrupt PNG ({type(exc).__name__}: {shorten(exc, limit=100)})"
    return size, pixels, None


@dataclass
class _CheckedFile:
    size: tuple[int, int] | None = None
    pixels: np.ndarray | None = None
    caption: str | None = None
    image_ok: bool = False
    problems: list[str] = field(default_factory=list)


def _outside(root: Path, path: Path) -> str | None:
    """None when `path` (links followed) stays inside `root`; else what is wrong, for a message."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        return f"cannot be followed ({shorten(exc, limit=100)})"
    if target.is_relative_to(root.resolve()):
        return None
    return f"resolves to {shorten(target, limit=100)}, which leaves the dataset folder"


def _check_file(root: Path, name: str, keep_pixels: bool) -> _CheckedFile:
    """Decode one listed image and read its caption, collecting every problem of both."""
    path = root / IMAGES_DIR / name
    checked = _CheckedFile()
    outside = _outside(root, path)
    if not path.exists() and not path.is_symlink():
        checked.problems.append(f"images/{name}: missing (listed in {METADATA_NAME})")
    elif outside:
        checked.problems.append(f"images/{name}: {outside}")
    else:
        checked.size, checked.pixels, why = _decode(path, keep_pixels)
        checked.image_ok = why is None
        if why:
            checked.problems.append(f"images/{name}: {why}")
    cap = caption_path(root, name)
    rel = cap.relative_to(root).as_posix()
    outside = _outside(root, cap)
    if not cap.exists() and not cap.is_symlink():
        checked.problems.append(f"{rel}: missing caption for images/{name} (run `dataset caption` to generate)")
    elif outside:
        checked.problems.append(f"{rel}: {outside}; a caption must be a file inside it")
    else:
        try:
            caption = read_user_bytes(cap, max_bytes=MAX_CAPTION_BYTES, what="caption").decode("utf-8").strip()
        except (UnreadableFile, UnicodeDecodeError) as exc:
            checked.problems.append(f"{rel}: cannot read: {shorten(exc, limit=120)}")
        else:
            if caption:
                checked.caption = caption
            else:
                checked.problems.append(f"{rel}: empty caption; expected text (run `dataset caption` to generate)")
    return checked


def _size_problems(sizes: list[tuple[str, tuple[int, int]]], size: int | None) -> tuple[int, list[str]]:
    """Every image square and of one size; returns the expected size and the problems.

    Images that share one wrong size are reported on one line (a whole 64 px set checked against 32
    would otherwise print a line per image)."""
    if size is not None and size < 1:
        return size, [f"size {size}: expected a positive sprite size"]
    if size is None:
        size = sizes[0][1][0] if sizes else 0
        source = f"the first image's width, images/{sizes[0][0]}" if sizes else ""
    else:
        source = "the requested size"
    wrong: dict[tuple[int, int], list[str]] = {}
    for name, (w, h) in sizes:
        if (w, h) != (size, size):
            wrong.setdefault((w, h), []).append(f"images/{name}")
    problems = []
    for (w, h), names in wrong.items():
        listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        subject = listed if len(names) == 1 else f"{len(names)} images ({listed})"
        if w != h:
            problems.append(f"{subject}: {w}x{h} is not square; expected {size}x{size}")
        else:
            problems.append(f"{subject}: {w}x{h}; expected {size}x{size} ({source})")
    return size, problems


def _extra_files(root: Path, listed: set[str]) -> list[str]:
    images = root / IMAGES_DIR
    extra = []
    for path in sorted(images.rglob("*")):
        rel = path.relative_to(images).as_posix()
        if any(part.startswith(".") for part in PurePosixPath(rel).parts):
            continue  # .DS_Store, editor backups: not sprites
        if not path.is_dir() and rel not in listed:
            extra.append(f"images/{shorten(rel, limit=120)}: not listed in any entity's files in {METADATA_NAME}")
    return extra


def _read(root: Path) -> tuple[Metadata | None, list[tuple[int, int, str]] | None, list[str]]:
    """(metadata, file listing, problems). When metadata.json fails the schema, the listing is still
    read from its JSON as far as it goes, so missing, extra and broken files are reported alongside."""
    try:
        data = read_metadata_json(root)
    except DatasetError as exc:
        return None, None, exc.problems
    try:
        meta = parse_metadata(data)
    except DatasetError as exc:
        return None, raw_listing(data), exc.problems
    listing = [(e, j, name) for e, ent in enumerate(meta.entities) for j, name in enumerate(ent.files)]
    return meta, listing, entity_problems(meta)


def inspect_dataset(root: Path, size: int | None = None, *, keep_pixels: bool = True) -> CheckedDataset:
    """Validate and decode a dataset; DatasetError lists every problem found. With keep_pixels=False
    the sprites list is empty and memory stays that of one image (what `validate_dataset` needs)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; expected a dataset in the guide's layout")
    meta, listing, problems = _read(root)
    if not (root / IMAGES_DIR).is_dir():
        problems.append(f"{IMAGES_DIR}/: missing folder in {root}")
    sprites: list[Sprite] = []
    sizes: list[tuple[str, tuple[int, int]]] = []
    listed: set[str] = set()
    usable = 0
    for e, j, name in listing or []:
        why = name_problem(name)
        if why or name in listed:
            if why and meta is None:  # with valid metadata, entity_problems has reported it
                problems.append(f"{METADATA_NAME}: entities[{e}].files[{j}]: {quote(name)}: {why}")
            continue
        listed.add(name)
        checked = _check_file(root, name, keep_pixels)
        problems += checked.problems
        if checked.image_ok and checked.size is not None:
            sizes.append((name, checked.size))
            if checked.caption is not None:
                usable += 1
                if checked.pixels is not None:
                    sprites.append(Sprite(e, j, name, checked.pixels, checked.caption))
    size, more = _size_problems(sizes, size)
    problems += more
    if listing is not None and (root / IMAGES_DIR).is_dir():
        problems += _extra_files(root, listed)
    if problems or meta is None:
        raise DatasetError(problems, title=f"dataset {root}: {len(problems)} problem(s)")
    categories = Counter(ent.category for ent in meta.entities)
    report = DatasetReport(root, usable, len(meta.entities), size,
                           {c: categories[c] for c in vocab.CATEGORIES if categories[c]})
    return CheckedDataset(report, meta, sprites)


def validate_dataset(root: Path, size: int | None = None) -> DatasetReport:
    """Check a dataset folder; DatasetError lists every problem (one line each, file and rule)."""
    return inspect_dataset(root, size, keep_pixels=False).report
