"""Resolve `model.base` to loaded diffusion parts: builtin (from the cache), folder, or hub id.

Loading never builds: the builtin base is built by `base build`, or once per sweep before its trials
(`trainers.prepare`), and loading one that is not built yet is an error saying so.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from catsith_sweep.errors import ModelSourceError
from catsith_sweep.layout import BASE_PIPELINE_DIR, MODEL_INDEX
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


def pipeline_folder(folder: Path) -> Path | None:
    """The diffusers pipeline of `folder`: the folder itself, or the `diffusers/` that `base build`
    writes beside its config and samples; None when neither holds a model_index.json."""
    for candidate in (folder, folder / BASE_PIPELINE_DIR):
        if (candidate / MODEL_INDEX).is_file():
            return candidate
    return None


def base_location(base: str, cache_dir: Path | None) -> Path | str:
    """Folder (builtin or local) or hub id for `model.base`, without loading anything."""
    name = parse_builtin(base)
    if name is not None:
        return builtin_dir(name, cache_dir) / BASE_PIPELINE_DIR
    local = Path(base).expanduser()
    if local.exists() or base.startswith((".", "/", "~")) or base.count("/") != 1:
        pipeline = pipeline_folder(local)
        if pipeline is None:
            raise ModelSourceError(
                f"model.base: {base!r} is not a diffusers model folder (no {MODEL_INDEX} in it or in its "
                f"{BASE_PIPELINE_DIR}/ folder); give a diffusers folder, a folder `base build --out` wrote, "
                "a hub id or builtin:catsith-tiny")
        return pipeline
    return base


def builtin_ready(base: str, cache_dir: Path | None) -> bool:
    """False only for a builtin base that is not built in the cache yet."""
    name = parse_builtin(base)
    return name is None or (builtin_dir(name, cache_dir) / BASE_PIPELINE_DIR / MODEL_INDEX).is_file()


def load_base(base: str, cache_dir: Path | None, revision: str | None = None) -> DiffusionParts:
    """Load `model.base`; a builtin base must have been built (`base build`, or a sweep's preparation)."""
    location = base_location(base, cache_dir)
    if not builtin_ready(base, cache_dir):
        raise ModelSourceError(
            f"model.base: {base!r} is not built yet (no {Path(location) / MODEL_INDEX}); build it with "
            "`python -m catsith_sweep base build` (about 18 minutes on 2 CPUs), or let `run` build it "
            "once before its trials")
    if isinstance(location, str) and not hub_reachable():
        try:
            return load_parts(location, revision=revision, local_only=True)
        except ModelSourceError:
            raise ModelSourceError(
                f"model.base: {base!r} is a hub id, the Hugging Face hub cannot be reached from this "
                "machine, and it is not in the local HF cache; download it where the hub is reachable "
                "(`huggingface-cli download ...`) and give its folder as model.base") from None
    return load_parts(location, revision=revision)
