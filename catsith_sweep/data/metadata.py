"""The guide's `metadata.json` (TRAINING_GUIDE.md, "Metadata Schema") as pydantic models.

The models check types and ranges only. Rules that need the vocabulary or the files on disk (known
kinds, direction counts, files present) live in `validate.py`, which reports them all together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from catsith_sweep.errors import DatasetError, quote
from catsith_sweep.io import atomic_write_bytes
from catsith_sweep.user_input import UnreadableFile, read_user_json

METADATA_NAME = "metadata.json"
IMAGES_DIR = "images"
CAPTIONS_DIR = "captions"
MAX_METADATA_BYTES = 16 << 20

# The guide's caption_generator words: the fixed first part and the fixed last parts of a caption.
DEFAULT_STYLE_PREFIX = "pixel art game sprite, "
DEFAULT_STYLE_SUFFIX = ", transparent background, 16-bit retro style"


def caption_path(root: Path, file_name: str) -> Path:
    """captions/<file name with .txt>: mirrors images/, subfolders included."""
    return Path(root) / CAPTIONS_DIR / Path(file_name).with_suffix(".txt")

# Strict ints: a colour written as 0.5 or "64" is a mistake to report, not to coerce.
Channel = Annotated[int, Field(strict=True, ge=0, le=255)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Entity(_Model):
    """One game entity: all the sprites of one design (8 for a directional ship, else usually 1)."""

    id: str = Field(min_length=1)
    category: str
    kind: str
    directions: int = Field(strict=True)
    base_color: tuple[Channel, Channel, Channel] | None = None
    files: list[str] = Field(min_length=1)


class Captions(_Model):
    """Words put before and after every generated caption (see captions.py for how they combine)."""

    style_prefix: str = DEFAULT_STYLE_PREFIX
    style_suffix: str = DEFAULT_STYLE_SUFFIX


class Metadata(_Model):
    version: str
    style: str
    entities: list[Entity]
    captions: Captions = Field(default_factory=Captions)


def _key_path(loc: tuple[int | str, ...]) -> str:
    """('entities', 3, 'base_color', 0) -> 'entities[3].base_color[0]'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _allowed_keys(loc: tuple[int | str, ...]) -> str:
    """The keys the model at the parent of `loc` accepts, for an unknown-key message."""
    model: type[BaseModel] = Metadata
    if loc[:1] == ("entities",) and len(loc) > 2:
        model = Entity
    elif loc[:1] == ("captions",) and len(loc) > 1:
        model = Captions
    return ", ".join(model.model_fields)


def _describe(error: Any) -> str:
    path = _key_path(tuple(error["loc"]))
    if error["type"] == "missing":
        what = "value (expected [r, g, b])" if error["loc"] and isinstance(error["loc"][-1], int) else "key"
        return f"{METADATA_NAME}: {path}: required {what} is missing"
    if error["type"] == "extra_forbidden":
        return f"{METADATA_NAME}: {path}: unknown key; allowed keys here: {_allowed_keys(tuple(error['loc']))}"
    return f"{METADATA_NAME}: {path}: {error['msg']} (got {quote(error['input'])})"


def parse_metadata(data: Any) -> Metadata:
    """Validate already-decoded JSON; DatasetError lists every schema problem with its key path."""
    try:
        return Metadata.model_validate(data)
    except ValidationError as exc:
        raise DatasetError([_describe(e) for e in exc.errors()]) from None


def read_metadata_json(root: Path) -> Any:
    """The decoded JSON of `root/metadata.json`; DatasetError when it is missing, unreadable or not JSON."""
    path = Path(root) / METADATA_NAME
    try:
        return read_user_json(path, max_bytes=MAX_METADATA_BYTES, what="metadata file")
    except UnreadableFile as exc:
        if str(exc) == "file not found":
            raise DatasetError(f"{METADATA_NAME}: missing in {root} (expected the guide's metadata file)") from None
        raise DatasetError(f"{METADATA_NAME}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{METADATA_NAME}: not valid JSON: {exc}") from None
    except ValueError as exc:  # bounds: nesting, huge or non-finite numbers, not UTF-8
        raise DatasetError(f"{METADATA_NAME}: refused: {exc}") from None


def load_metadata(root: Path) -> Metadata:
    """Read `root/metadata.json`; DatasetError names the file, the key path and the rule broken."""
    return parse_metadata(read_metadata_json(root))


def raw_listing(data: Any) -> list[tuple[int, int, str]] | None:
    """Best-effort (entity index, position, name) of every file name in decoded metadata that failed
    the schema, so the disk can still be checked against it; None when there is no entity list."""
    entities = data.get("entities") if isinstance(data, dict) else None
    if not isinstance(entities, list):
        return None
    return [
        (e, j, name)
        for e, entity in enumerate(entities)
        if isinstance(entity, dict) and isinstance(entity.get("files"), list)
        for j, name in enumerate(entity["files"])
        if isinstance(name, str)
    ]


def write_metadata(root: Path, metadata: Metadata) -> None:
    """Write `root/metadata.json` atomically, in the guide's key order."""
    text = json.dumps(metadata.model_dump(mode="json"), indent=2) + "\n"
    atomic_write_bytes(Path(root) / METADATA_NAME, text.encode("utf-8"))
