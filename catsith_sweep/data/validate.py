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
"""

from __future__ import annotations

import io
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
from catsith_sweep.errors import DatasetError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
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
        where = f"{METADATA_NAME}: entities[{i}] ({ent.id})"
        if ids[ent.id] > 1:
            problems.append(f"{where}.id: duplicate entity id {ent.id!r} ({ids[ent.id]} entities use it)")
        kinds = vocab.KINDS_BY_CATEGORY.get(ent.category)
        if kinds is None:
            problems.append(f"{where}.category: unknown category {ent.category!r}; "
                            f"expected one of {', '.join(vocab.CATEGORIES)}")
        elif ent.kind not in kinds:
            problems.append(f"{where}.kind: unknown {ent.category} kind {ent.kind!r}; "
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
                problems.append(f"{where}.files[{j}]: {name!r}: {why}")
            elif name in owner:
                problems.append(f"{where}.files[{j}]: images/{name} is already listed by entity {owner[name]}")
            else:
                owner[name] = ent.id
    return problems


def _decode(path: Path) -> tuple[np.ndarray | None, str | None]:
    """Pixels of a PNG, or why it is unusable (missing, not a PNG, corrupt, not RGBA)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot read: {exc.strerror or exc}"
    if not data.startswith(PNG_SIGNATURE):
        return None, "not a PNG file (bad signature); expected an RGBA PNG"
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            pixels = np.asarray(img).copy() if mode == "RGBA" else None
    except Exception as exc:  # PIL raises many types for truncated or corrupt data
        return None, f"corrupt PNG ({type(exc).__name__}: {exc})"
    if pixels is None:
        return None, f"mode {mode}; expected RGBA (8-bit with an alpha channel)"
    return pixels, None


def _check_file(root: Path, name: str) -> tuple[np.ndarray | None, str | None, list[str]]:
    """Decode one listed image and read its caption, collecting every problem of both."""
    inside = root.resolve()
    path = root / IMAGES_DIR / name
    problems: list[str] = []
    pixels = None
    if not path.is_file():
        problems.append(f"images/{name}: missing (listed in {METADATA_NAME})")
    elif not path.resolve().is_relative_to(inside):
        problems.append(f"images/{name}: resolves to {path.resolve()}, which leaves the dataset folder")
    else:
        pixels, why = _decode(path)
        if why:
            problems.append(f"images/{name}: {why}")
    cap = caption_path(root, name)
    rel = cap.relative_to(root).as_posix()
    caption = None
    try:
        caption = cap.read_text(encoding="utf-8").strip()
        if not caption:
            problems.append(f"{rel}: empty caption; expected text (run `dataset caption` to generate)")
            caption = None
    except FileNotFoundError:
        problems.append(f"{rel}: missing caption for images/{name} (run `dataset caption` to generate)")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{rel}: cannot read: {exc}")
    return pixels, caption, problems


def _size_problems(sprites: list[tuple[str, np.ndarray]], size: int | None) -> tuple[int, list[str]]:
    """Every image square and of one size; returns the expected size and the problems.

    Images that share one wrong size are reported on one line (a whole 64 px set checked against 32
    would otherwise print a line per image)."""
    if size is not None and size < 1:
        return size, [f"size {size}: expected a positive sprite size"]
    if size is None:
        size = sprites[0][1].shape[1] if sprites else 0
        source = f"the first image's width, images/{sprites[0][0]}" if sprites else ""
    else:
        source = "the requested size"
    wrong: dict[tuple[int, int], list[str]] = {}
    for name, pixels in sprites:
        h, w = pixels.shape[:2]
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
        if path.is_file() and rel not in listed:
            extra.append(f"images/{rel}: not listed in any entity's files in {METADATA_NAME}")
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


def inspect_dataset(root: Path, size: int | None = None) -> CheckedDataset:
    """Validate and decode a dataset; DatasetError lists every problem found."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; expected a dataset in the guide's layout")
    meta, listing, problems = _read(root)
    if not (root / IMAGES_DIR).is_dir():
        problems.append(f"{IMAGES_DIR}/: missing folder in {root}")
    sprites: list[Sprite] = []
    decoded: list[tuple[str, np.ndarray]] = []
    listed: set[str] = set()
    for e, j, name in listing or []:
        why = name_problem(name)
        if why or name in listed:
            if why and meta is None:  # with valid metadata, entity_problems has reported it
                problems.append(f"{METADATA_NAME}: entities[{e}].files[{j}]: {name!r}: {why}")
            continue
        listed.add(name)
        pixels, caption, file_problems = _check_file(root, name)
        problems += file_problems
        if pixels is not None:
            decoded.append((name, pixels))
            if caption is not None:
                sprites.append(Sprite(e, j, name, pixels, caption))
    size, more = _size_problems(decoded, size)
    problems += more
    if listing is not None and (root / IMAGES_DIR).is_dir():
        problems += _extra_files(root, listed)
    if problems or meta is None:
        raise DatasetError(problems, title=f"dataset {root}: {len(problems)} problem(s)")
    categories = Counter(ent.category for ent in meta.entities)
    report = DatasetReport(root, len(sprites), len(meta.entities), size,
                           {c: categories[c] for c in vocab.CATEGORIES if categories[c]})
    return CheckedDataset(report, meta, sprites)


def validate_dataset(root: Path, size: int | None = None) -> DatasetReport:
    """Check a dataset folder; DatasetError lists every problem (one line each, file and rule)."""
    return inspect_dataset(root, size).report
