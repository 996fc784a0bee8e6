"""The sprite dataset as torch sees it: validated on open, decoded once, labelled from vocab.py."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from catsith_sweep.data import vocab
from catsith_sweep.data.fingerprint import fingerprint  # noqa: F401  # here too: its old home
from catsith_sweep.data.validate import inspect_dataset
from catsith_sweep.errors import DatasetError


class Augment(Protocol):
    """What SpriteDataset needs from an augmentation (augment.SpriteAugment is one)."""

    def __call__(self, rgba: np.ndarray, *, directions: int) -> np.ndarray: ...


class SpriteDataset(Dataset[dict[str, Any]]):
    """Sprites of a dataset folder in the guide's layout.

    An item is {"image": float32 [4, H, W] RGBA in [0, 1], "caption": str, "category": int
    (vocab.CATEGORIES index), "kind": int (vocab.KIND_LABELS index), "direction": 0..7, or -1 for a
    non-directional sprite, "entity": id, "directions": the entity's direction count}.
    `images`, `captions` and the label tensors are the un-augmented data, for caching and metrics.
    """

    def __init__(self, root: str | Path, *, augment: Augment | None = None, size: int | None = None) -> None:
        checked = inspect_dataset(Path(root), size)
        self.root = Path(root)
        self.report = checked.report
        self.metadata = checked.metadata
        self.augment = augment
        sprites = checked.sprites
        entities = [checked.metadata.entities[s.entity] for s in sprites]
        self._pixels = np.stack([s.pixels for s in sprites])  # N x H x W x 4 uint8, decoded once
        self.images = torch.from_numpy(self._pixels).permute(0, 3, 1, 2).float().div(255).contiguous()
        self.captions: list[str] = [s.caption for s in sprites]
        self.entities: list[str] = [e.id for e in entities]
        self.names: list[str] = [s.name for s in sprites]
        self.categories = torch.tensor([vocab.CATEGORIES.index(e.category) for e in entities])
        self.kinds = torch.tensor([vocab.kind_label(e.category, e.kind) for e in entities])
        self.directions = torch.tensor([s.index if e.directions > 1 else -1
                                        for s, e in zip(sprites, entities, strict=True)])
        self.entity_directions = torch.tensor([e.directions for e in entities])

    @property
    def labels(self) -> dict[str, torch.Tensor]:
        """Per-image label tensors (int64, length N): category, kind, direction (-1: none)."""
        return {"category": self.categories, "kind": self.kinds, "direction": self.directions}

    @property
    def has_augment(self) -> bool:
        return self.augment is not None

    @property
    def size(self) -> int:
        return self.report.size

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        directions = int(self.entity_directions[index])
        if self.augment is not None:
            pixels = self.augment(self._pixels[index], directions=directions)
            image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div(255)
        else:
            image = self.images[index].clone()  # callers may edit it in place; the cache must not change
        return {
            "image": image,
            "caption": self.captions[index],
            "category": int(self.categories[index]),
            "kind": int(self.kinds[index]),
            "direction": int(self.directions[index]),
            "entity": self.entities[index],
            "directions": directions,
        }


def _groups(dataset: SpriteDataset, indices: Sequence[int] | None) -> list[list[int]]:
    """Indices grouped by entity, in dataset order."""
    groups: dict[str, list[int]] = {}
    for i in range(len(dataset)) if indices is None else indices:
        groups.setdefault(dataset.entities[i], []).append(int(i))
    return list(groups.values())


class EntityBatchSampler(Sampler[list[int]]):
    """Batches in which all the images of an entity (a ship's 8 directions) arrive together.

    Entities are shuffled per epoch from (seed, epoch); an entity that fits in a batch is never split
    (larger ones fill consecutive batches), and gaps are filled with single-image entities, so batches
    are full except the last few. The epoch advances on every iteration; `set_epoch` pins it.
    Pass `indices` (e.g. the train split) to sample a subset.
    """

    def __init__(self, dataset: SpriteDataset, batch_size: int, seed: int = 0, *,
                 indices: Sequence[int] | None = None) -> None:
        if batch_size < 1:
            raise DatasetError(f"batch_size {batch_size}: expected at least 1")
        self.groups = _groups(dataset, indices)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = [self.groups[i] for i in rng.permutation(len(self.groups))]
        singles = [g[0] for g in order if len(g) == 1]
        batches: list[list[int]] = []
        current: list[int] = []
        for group in (g for g in order if len(g) > 1):
            if len(current) + len(group) > self.batch_size and current:
                while singles and len(current) < self.batch_size:
                    current.append(singles.pop())
                batches.append(current)
                current = []
            for start in range(0, len(group), self.batch_size):  # a group larger than a batch
                chunk = group[start:start + self.batch_size]
                if len(current) + len(chunk) > self.batch_size:
                    batches.append(current)
                    current = []
                current = current + chunk
        for index in singles:
            if len(current) == self.batch_size:
                batches.append(current)
                current = []
            current.append(index)
        if current:
            batches.append(current)
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches(self.epoch)
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        return len(self._batches(self.epoch))


def split_indices(dataset: SpriteDataset, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, val) image indices split BY ENTITY, so no view of a validation ship is trained on.

    round(val_fraction * entities) entities go to validation (at least one when the fraction is > 0
    and there are two or more entities; never all). They are drawn in a seeded order, preferring
    entities whose kind keeps at least one entity in training, so every kind stays learnable.
    """
    if not 0 <= val_fraction < 1:
        raise DatasetError(f"val_fraction {val_fraction}: expected a value in [0, 1)")
    groups = _groups(dataset, None)
    n_val = round(val_fraction * len(groups))
    if val_fraction > 0 and len(groups) >= 2:
        n_val = min(max(n_val, 1), len(groups) - 1)
    rng = np.random.default_rng(seed)
    order = [groups[i] for i in rng.permutation(len(groups))]
    per_kind = {int(k): 0 for k in dataset.kinds.unique()}
    for g in groups:
        per_kind[int(dataset.kinds[g[0]])] += 1
    chosen: list[list[int]] = []
    for group in order:  # first pass: keep one entity of each kind in training
        kind = int(dataset.kinds[group[0]])
        if len(chosen) < n_val and per_kind[kind] > 1:
            chosen.append(group)
            per_kind[kind] -= 1
    for group in order:  # second pass, only if the fraction asks for more than that allows
        if len(chosen) < n_val and group not in chosen:
            chosen.append(group)
    val = sorted(i for g in chosen for i in g)
    val_set = set(val)
    return [i for i in range(len(dataset)) if i not in val_set], val
