"""Reading files the user points us at, within bounds: a config, metadata.json, a manifest.

Every reader here refuses what would hang or exhaust the process, with a message that names the file:
a FIFO or device instead of a file (reading it blocks forever), a file larger than the format ever
needs, JSON nested deeper than any real document, numbers with thousands of digits, NaN/Infinity
(serde and CatSith refuse them; no field of ours means "infinite").
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from catsith_sweep.errors import quote, shorten

MAX_JSON_DEPTH = 64
MAX_INT_DIGITS = 40  # more than any u64 or seed; Python refuses above 4300 digits anyway


class UnreadableFile(Exception):
    """Why a user file cannot be read; the message does not repeat the path (callers prefix it)."""


def open_regular_file(path: str | os.PathLike[str], *, max_bytes: int, what: str = "file") -> BinaryIO:
    """An open binary handle on a regular file of at most `max_bytes`; UnreadableFile says why not.

    The file is opened non-blocking and checked with fstat, so a FIFO is refused instead of waited on,
    and a file swapped for a FIFO between a stat and the open cannot slip through."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise UnreadableFile("file not found") from None
    except IsADirectoryError:
        raise UnreadableFile(f"is a folder; expected a {what}") from None
    except ValueError:  # an embedded NUL byte
        raise UnreadableFile("the path holds a NUL byte") from None
    except OSError as exc:
        raise UnreadableFile(f"cannot open: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    problem = None
    if stat.S_ISDIR(info.st_mode):
        problem = f"is a folder; expected a {what}"
    elif not stat.S_ISREG(info.st_mode):
        problem = f"is not a regular file (a FIFO, socket or device); expected a {what}"
    elif info.st_size > max_bytes:
        problem = f"is {info.st_size:,} bytes; a {what} is at most {max_bytes:,} bytes"
    if problem is not None:
        os.close(fd)
        raise UnreadableFile(problem)
    return os.fdopen(fd, "rb")


def read_user_bytes(path: str | os.PathLike[str], *, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most `max_bytes` (see open_regular_file)."""
    with open_regular_file(path, max_bytes=max_bytes, what=what) as handle:
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise UnreadableFile(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > max_bytes:  # it grew after the fstat
        raise UnreadableFile(f"is over {max_bytes:,} bytes; a {what} is at most {max_bytes:,} bytes")
    return data


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"a number with {len(text.lstrip('-')):,} digits; expected at most {MAX_INT_DIGITS}")
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object without repeated keys (json keeps the last silently; serde refuses a duplicate field)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {quote(key)} in one object; keep one")
        out[key] = value
    return out


def _non_finite_path(value: Any) -> str | None:
    """Key path (`weights.alpha`, `entities[2].base_color[0]`) of the first NaN/Infinity, or None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return path or "(top level)"
        if isinstance(node, dict):
            stack += [(f"{path}.{shorten(k)}" if path else shorten(k), v) for k, v in reversed(node.items())]
        elif isinstance(node, list):
            stack += [(f"{path}[{i}]", v) for i, v in reversed(list(enumerate(node)))]
    return None


def loads_bounded_json(data: bytes | str) -> Any:
    """json.loads that refuses NaN/Infinity (naming the key), huge numbers and nesting deeper than
    MAX_JSON_DEPTH. Raises ValueError (json.JSONDecodeError for syntax) with a one-line reason."""
    depth, in_string, escaped = 0, False, False
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    # Depth is checked on the text before parsing: the C parser recurses once per level and would
    # hit RecursionError (or worse, on a small stack) long before a limit we could check afterwards.
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels; expected a plain document")
        elif char in "]}":
            depth -= 1
    value = json.loads(text, parse_int=_bounded_int, object_pairs_hook=_unique_keys)
    where = _non_finite_path(value)
    if where is not None:  # NaN, Infinity or an overflowing 1e999: serde and CatSith refuse them too
        raise ValueError(f"{where}: not a finite number (NaN or Infinity); expected a finite number")
    return value


def read_user_json(path: Path, *, max_bytes: int, what: str) -> Any:
    """Read and parse a user's JSON file within bounds; UnreadableFile or ValueError say why not."""
    data = read_user_bytes(path, max_bytes=max_bytes, what=what)
    return loads_bounded_json(data)
