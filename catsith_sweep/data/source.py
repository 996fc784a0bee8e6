"""Where a trial's sprites come from: the user's dataset folder, or the builtin synthetic set,
generated once per (seed, variants, size, style, caption colours) into the cache and reused by every trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from catsith_sweep.data.metadata import METADATA_NAME
from catsith_sweep.io import file_lock
from catsith_sweep.layout import SYNTH_DIR, cache_root


def synth_folder_name(data: Any) -> str:
    """The cache folder of a `data` section's synthetic set: one per seed, variants, size, style and
    caption colour rule. The defaults (`16bit`, `guide`) add nothing, so sets cached before those options
    existed (the builtin base's among them) keep their folder."""
    style = "" if data.synth_style == "16bit" else f"-{data.synth_style}"
    colors = "" if data.caption_colors == "guide" else f"-{data.caption_colors}"
    return f"seed{data.synth_seed}-v{data.synth_variants}-{data.resolution}px{style}{colors}"


def dataset_root(data: Any, cache_dir: Path | None = None) -> Path:
    """The dataset folder for a `data` section, synthesising the builtin set when `data.path` is empty."""
    if data.path is not None:
        return Path(data.path)
    from catsith_sweep.data.synth import synth_dataset

    root = cache_root(cache_dir) / SYNTH_DIR / synth_folder_name(data)
    if (root / METADATA_NAME).is_file():
        return root
    # Concurrent trials on one machine: one builds, the others wait and then reuse it.
    with file_lock(root.parent / f".{root.name}.lock"):
        if not (root / METADATA_NAME).is_file():
            synth_dataset(root, seed=data.synth_seed, size=data.resolution, variants=data.synth_variants,
                          style=data.synth_style, caption_colors=data.caption_colors)
    return root


def open_dataset(data: Any, cache_dir: Path | None = None, *, augment: bool = True) -> Any:
    """A SpriteDataset for the section, with its augmentation when enabled."""
    from catsith_sweep.data.dataset import SpriteDataset

    pipeline = None
    if augment and data.augment.enabled:
        from catsith_sweep.data.augment import SpriteAugment

        pipeline = SpriteAugment(data.augment)
    return SpriteDataset(dataset_root(data, cache_dir), augment=pipeline, size=data.resolution)
