"""File plumbing shared by every layer that writes outputs (datasets, checkpoints, exports, caches,
registry packages): readers see the old file or folder or the whole new one, never half of one.

* Files: `atomic_write_bytes` / `_text` / `_json`, or `atomic_path` for writers that want a path
  (safetensors, ONNX, PIL): a temporary file beside the target, fsynced, then `os.replace`.
* Folders: fill a `staging_dir` beside the target, then `replace_dir` (swap out an old one) or
  `publish_dir` (only where nothing is yet); both fsync the parent so the rename survives a crash.
* Locks: `file_lock`, an exclusive lock between processes (the `filelock` package: flock on Unix,
  released by the kernel when a process dies, so a crash never leaves it held).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# mkstemp/mkdtemp create 0600/0700; outputs are shared (a game may read a registry as another user).
FILE_MODE = 0o644
DIR_MODE = 0o755


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the creations and renames inside folder `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; when the block ends without error, the file is
    fsynced and renamed to `path`; on error it is removed and `path` is left as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the target: os.replace is only atomic within one filesystem.
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` as UTF-8 to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any, *, sort_keys: bool = False) -> None:
    """Write `data` as indented JSON (with a final newline) to `path` atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def staging_dir(target: str | os.PathLike[str]) -> Path:
    """A new empty folder beside `target` (same filesystem, hidden name) to fill before
    `replace_dir` or `publish_dir` moves it into place. The caller removes it if it gives up."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.staging-"))
    os.chmod(staging, DIR_MODE)
    return staging


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike[str], *, replace: bool = True) -> Iterator[Path]:
    """Yield a `staging_dir` for `target`; when the block ends without error it becomes `target`
    (`replace_dir`, or `publish_dir` with `replace=False`); on error it is removed."""
    staging = staging_dir(target)
    try:
        yield staging
        if replace:
            replace_dir(staging, target)
        else:
            publish_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already after a successful move


def publish_dir(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Rename a fully written `staging` folder to `target`, which must be absent or an empty folder.
    OSError (EEXIST/ENOTEMPTY) when `target` holds anything: a published folder is never overwritten."""
    target = Path(target)
    fsync_dir(staging)
    os.rename(staging, target)  # rename(2) replaces an empty folder, refuses a non-empty one
    fsync_dir(target.parent)


def replace_dir(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move a fully written `staging` folder to `target`, replacing any old one.

    The old folder is renamed aside (a unique name, so concurrent replacers do not collide) before
    the new one moves in, so a reader sees the old folder or the new one; at worst, for the instant
    between the two renames, none.
    """
    target = Path(target)
    fsync_dir(staging)
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    with contextlib.suppress(FileNotFoundError):  # no old folder: nothing to move aside
        os.rename(target, aside)
    os.rename(staging, target)
    fsync_dir(target.parent)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on the lock file `path` (created with its folder) for the block.

    Processes on one machine that build the same cache entry take it, so one builds and the others
    wait and then reuse the result.
    """
    from filelock import FileLock

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path):
        yield
