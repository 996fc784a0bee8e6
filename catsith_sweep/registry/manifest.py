"""The CatSith registry `manifest.json` (catsith-formats.md §1): exact field names, serde-compatible types.

CatSith's manifest is written by serde, so:
* a 32-byte hash is a JSON array of 32 integers 0-255 (never hex or base64);
* `contact` / `website` are `Option<String>`: written as `null` when absent;
* unknown fields are ignored by serde: we parse them without failing and report them as warnings.
Models are strict (no "1" for 1, no true for 1) because serde would refuse those too.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import blake3
from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "weights.bin"
MANIFEST_VERSION = 1
MAX_WEIGHTS_BYTES = 1 << 30  # CatSith's loader refuses weights files over 1 GiB
KNOWN_COMPATIBLE = frozenset({"diffusion_v1", "sprite_vae_v1"})

Byte = Annotated[int, Field(ge=0, le=255)]
Hash32 = Annotated[list[Byte], Field(min_length=32, max_length=32)]
U32 = Annotated[int, Field(ge=0, le=2**32 - 1)]
U64 = Annotated[int, Field(ge=0, le=2**64 - 1)]


class Category(StrEnum):
    """LoRA categories; the value is the serde variant name, the order gives the hash byte."""

    AESTHETIC = "Aesthetic"
    ENTITY = "Entity"
    EFFECTS = "Effects"
    ENVIRONMENT = "Environment"
    COLOR = "Color"

    @property
    def byte(self) -> int:
        """The single byte CatSith hashes for this category (Aesthetic 0 ... Color 4)."""
        return list(Category).index(self)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class Creator(_Strict):
    name: str
    contact: str | None = None
    website: str | None = None


class Compatibility(_Strict):
    name: str
    version: str


class WeightsRef(_Strict):
    path: str
    size_bytes: U64
    hash: Hash32
    rank: U32
    alpha: float


class Preview(_Strict):
    path: str
    description: str


class Manifest(_Strict):
    """manifest.json, fields in the order of CatSith's struct."""

    version: U32
    hash: Hash32
    name: str
    description: str
    creator: Creator
    category: Category
    compatible_with: list[Compatibility]
    weights: WeightsRef
    previews: list[Preview]
    license: str
    tags: list[str]
    created_at: U64

    def to_json(self) -> bytes:
        """Pretty JSON as written into a package (hashes stay arrays of ints)."""
        return (json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def unknown_fields(raw: object) -> list[str]:
    """Dotted names of fields in a manifest's JSON that CatSith's structs do not have (serde ignores them)."""
    found: list[str] = []

    def walk(value: object, model: type[BaseModel], prefix: str) -> None:
        if not isinstance(value, dict):
            return
        for key, sub in value.items():
            field = model.model_fields.get(key)
            if field is None:
                found.append(prefix + key)
                continue
            nested = _nested_model(field.annotation)
            if nested is not None:
                for item in sub if isinstance(sub, list) else [sub]:
                    walk(item, nested, f"{prefix}{key}.")

    walk(raw, Manifest, "")
    return sorted(set(found))


def _nested_model(annotation: object) -> type[BaseModel] | None:
    """The model inside `Model`, `list[Model]` or `Model | None`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def blake3_ints(data: bytes) -> list[int]:
    """blake3 of `data` as the list of 32 ints serde writes for a [u8; 32]."""
    return list(blake3.blake3(data).digest())


def package_hash(name: str, category: Category, weights: bytes) -> list[int]:
    """CatSith's package hash: blake3(name UTF-8 bytes + one category byte + weights.bin bytes)."""
    hasher = blake3.blake3(name.encode("utf-8"))
    hasher.update(bytes([category.byte]))
    hasher.update(weights)
    return list(hasher.digest())


def hash_hex(value: list[int]) -> str:
    """A hash as hex, for display only (the manifest stores the int array)."""
    return bytes(value).hex()
