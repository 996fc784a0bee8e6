"""Resolve `model.base` to loaded diffusion parts: builtin (built once and cached), folder, or hub id."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from catsith_sweep.errors import ModelSourceError
from catsith_sweep.models.builtin import DiffusionParts, builtin_dir, load_parts, parse_builtin

HUB_HOST = "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds instead of hanging in retries."""
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def base_location(base: str, cache_dir: Path | None) -> Path | str:
    """Folder (builtin or local) or hub id for `model.base`, without loading anything."""
    name = parse_builtin(base)
    if name is not None:
        return builtin_dir(name, cache_dir) / "diffusers"
    local = Path(base).expanduser()
    if local.exists() or base.startswith((".", "/", "~")) or base.count("/") != 1:
        if not (local / "model_index.json").is_file():
            raise ModelSourceError(f"model.base: {base!r} is not a diffusers model folder "
                                   "(no model_index.json); give a folder, a hub id or builtin:catsith-tiny")
        return local
    return base


def builtin_ready(base: str, cache_dir: Path | None) -> bool:
    name = parse_builtin(base)
    return name is None or (builtin_dir(name, cache_dir) / "diffusers" / "model_index.json").is_file()


def ensure_builtin(base: str, cache_dir: Path | None, *, log=print) -> None:
    """Build the builtin base once (under a lock, so concurrent callers wait for one build)."""
    name = parse_builtin(base)
    if name is None or builtin_ready(base, cache_dir):
        return
    target = builtin_dir(name, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if builtin_ready(base, cache_dir):
            return
        from catsith_sweep.trainers.base_build import build_base

        log(f"building {base} (first use; cached in {target})")
        build_base(target, cache_dir=cache_dir, log=log)


def load_base(base: str, cache_dir: Path | None, revision: str | None = None) -> DiffusionParts:
    """Load `model.base` (building the builtin one first if needed)."""
    ensure_builtin(base, cache_dir)
    location = base_location(base, cache_dir)
    if isinstance(location, str) and not hub_reachable():
        try:
            return load_parts(location, revision=revision, local_only=True)
        except ModelSourceError:
            raise ModelSourceError(
                f"model.base: {base!r} is a hub id, the Hugging Face hub cannot be reached from this "
                "machine, and it is not in the local HF cache; download it where the hub is reachable "
                "(`huggingface-cli download ...`) and give its folder as model.base") from None
    return load_parts(location, revision=revision)
