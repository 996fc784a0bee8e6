"""A dataset folder's content fingerprint, without torch (the sweep driver needs it before any trial)."""

from __future__ import annotations

from pathlib import Path

import blake3

from catsith_sweep.data.metadata import CAPTIONS_DIR, IMAGES_DIR, METADATA_NAME


def fingerprint(root: str | Path) -> str:
    """blake3 over metadata.json, images/ and captions/ (relative path, size and bytes of each file,
    in sorted order): any edit, rename, addition or removal changes it; other files do not."""
    root = Path(root)
    files = [root / METADATA_NAME] if (root / METADATA_NAME).is_file() else []
    for sub in (IMAGES_DIR, CAPTIONS_DIR):
        files += [p for p in (root / sub).rglob("*") if p.is_file()]
    hasher = blake3.blake3()
    for rel, path in sorted((p.relative_to(root).as_posix(), p) for p in files):
        name = rel.encode("utf-8")
        data = path.read_bytes()
        hasher.update(len(name).to_bytes(8, "little") + name + len(data).to_bytes(8, "little") + data)
    return hasher.hexdigest()
