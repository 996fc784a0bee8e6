"""CatSith's `weights.bin` LoRA format, version 1 (catsith-formats.md §1), byte for byte.

Layout, all integers u32 little-endian, floats f32 little-endian::

    b"LORA" | version=1 | rank | layer_count
    per layer: name_len | name (UTF-8) | in_dim | out_dim
               A: in_dim x rank, row-major  (= PEFT lora_A / lora_down, transposed)
               B: rank x out_dim, row-major (= PEFT lora_B / lora_up, transposed)

CatSith merges `W' = W + strength * (alpha / rank) * (A @ B)` with W laid out in x out, i.e. the
transpose of a torch Linear weight. Alpha is not in this file: it lives in the manifest.
The file has one rank, so layers of mixed rank are refused rather than padded (padding would change
nothing numerically but would mislead anything that reads the rank as the adapter's capacity).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from catsith_sweep.errors import UserInputError
from catsith_sweep.export.lora_formats import LoraLayer, write_bytes_atomic

MAGIC = b"LORA"
VERSION = 1
_U32 = struct.Struct("<I")
_HEADER = struct.Struct("<4sIII")


class WeightsBinError(UserInputError):
    """A weights.bin cannot be written (bad layer set) or read (corrupt, truncated, wrong version)."""


@dataclass(frozen=True, eq=False)
class BinLayer:
    """One layer as weights.bin stores it: A is in x rank, B is rank x out (CatSith's layout)."""

    name: str
    a: torch.Tensor
    b: torch.Tensor

    @property
    def in_dim(self) -> int:
        return int(self.a.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.b.shape[1])

    def to_lora_layer(self, alpha: float) -> LoraLayer:
        """Back to the neutral (torch Linear) orientation, with alpha taken from the manifest."""
        return LoraLayer(self.name, self.a.T, self.b.T, alpha)


@dataclass(frozen=True, eq=False)
class WeightsBin:
    """A parsed weights.bin: its single rank and its layers in file order."""

    rank: int
    layers: list[BinLayer]


def encode_weights_bin(layers: Sequence[LoraLayer]) -> bytes:
    """The weights.bin bytes of `layers` (one shared rank; alpha is not stored)."""
    if not layers:
        raise WeightsBinError("weights.bin needs at least one layer")
    ranks = sorted({layer.rank for layer in layers})
    if len(ranks) != 1:
        by_rank = {r: [layer.name for layer in layers if layer.rank == r][:3] for r in ranks}
        raise WeightsBinError(
            f"weights.bin holds one rank for all layers, these layers have ranks {ranks} "
            f"(e.g. {by_rank}); train with a single rank or export each rank separately"
        )
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise WeightsBinError("weights.bin layer names must be unique")
    parts = [_HEADER.pack(MAGIC, VERSION, ranks[0], len(layers))]
    for layer in layers:
        if not (torch.isfinite(layer.down).all() and torch.isfinite(layer.up).all()):
            raise WeightsBinError(f"{layer.name}: non-finite weights (NaN/inf): the training diverged")
        name = layer.name.encode("utf-8")
        if not name:
            raise WeightsBinError("weights.bin layer names must be non-empty")
        parts += [_U32.pack(len(name)), name, _U32.pack(layer.in_dim), _U32.pack(layer.out_dim)]
        # .T then .contiguous() gives the row-major transposed matrices CatSith expects.
        parts.append(_f32(layer.down.T))
        parts.append(_f32(layer.up.T))
    return b"".join(parts)


def _f32(t: torch.Tensor) -> bytes:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype="<f4").tobytes()


def write_weights_bin(layers: Sequence[LoraLayer], path: str | os.PathLike[str]) -> Path:
    """Write `layers` as weights.bin, atomically."""
    write_bytes_atomic(path, encode_weights_bin(layers))
    return Path(path)


def read_weights_bin(path: str | os.PathLike[str]) -> WeightsBin:
    """Read and strictly validate a weights.bin file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise WeightsBinError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        return decode_weights_bin(data)
    except WeightsBinError as exc:
        raise WeightsBinError(f"{path}: {exc.problems[0]}") from None


class _Reader:
    """A bounds-checked cursor: every read states what it wanted when the data runs out."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise WeightsBinError(
                f"truncated: {what} needs {n} bytes at offset {self.pos}, only {len(self.data) - self.pos} left"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u32(self, what: str) -> int:
        return int(_U32.unpack(self.take(4, what))[0])

    def floats(self, rows: int, cols: int, what: str) -> torch.Tensor:
        raw = self.take(rows * cols * 4, what)  # size checked before any allocation
        values = np.frombuffer(raw, dtype="<f4")
        if not np.isfinite(values).all():  # CatSith would merge NaN into every weight it touches
            bad = int((~np.isfinite(values)).sum())
            raise WeightsBinError(f"{what}: {bad} non-finite value(s) (NaN/inf); weights must be finite")
        return torch.from_numpy(values.astype(np.float32).reshape(rows, cols))


def decode_weights_bin(data: bytes) -> WeightsBin:
    """Parse weights.bin bytes; bad magic/version, truncation, bad names and trailing bytes are errors."""
    reader = _Reader(data)
    magic = reader.take(4, "magic")
    if magic != MAGIC:
        raise WeightsBinError(f"bad magic {magic!r}, expected {MAGIC!r}: not a CatSith LoRA weights file")
    version = reader.u32("version")
    if version != VERSION:
        raise WeightsBinError(f"unsupported weights.bin version {version} (this tool reads version {VERSION})")
    rank, count = reader.u32("rank"), reader.u32("layer count")
    if rank == 0:
        raise WeightsBinError("rank is 0")
    layers, seen = [], set()
    for index in range(count):
        where = f"layer {index}"
        raw_name = reader.take(reader.u32(f"{where} name length"), f"{where} name")
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise WeightsBinError(f"{where}: name is not valid UTF-8") from None
        if not name or name in seen:
            raise WeightsBinError(f"{where}: name {name!r} is empty or repeated")
        seen.add(name)
        in_dim, out_dim = reader.u32(f"{name} in_dim"), reader.u32(f"{name} out_dim")
        if in_dim == 0 or out_dim == 0:
            raise WeightsBinError(f"{name}: zero dimension ({in_dim} x {out_dim})")
        a = reader.floats(in_dim, rank, f"{name} A")
        b = reader.floats(rank, out_dim, f"{name} B")
        layers.append(BinLayer(name, a, b))
    if reader.pos != len(data):
        raise WeightsBinError(f"{len(data) - reader.pos} trailing bytes after the last layer")
    return WeightsBin(rank, layers)
