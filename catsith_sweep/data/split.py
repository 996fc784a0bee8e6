"""The held-out split: whole entities (a design with all its directions) kept out of training.

Every trainer and the sprite feature network take their training images from `EntitySplit.train` and
score on `EntitySplit.heldout`, so no view of a held-out ship is ever trained on, and selection
metrics measure designs the model has not seen. The split is a function of the dataset's entity
order, the fraction and the seed only: the same inputs give the same split in every trial.

"Too small to measure": a held-out set of fewer than `min_heldout_images` images (default
MIN_HELDOUT_IMAGES = 8; a trainer passes its metric sample count when that is larger) is refused, as
is a split that leaves no entity for training. Below 8 images one sprite is more than 1/8 of the set,
and FID/KID over the set move by more than the differences a sweep has to rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from catsith_sweep.errors import DatasetError

MIN_HELDOUT_IMAGES = 8
"""Fewest held-out images a split may have (see the module docstring for why)."""


class EntityLabelled(Protocol):
    """What the split reads from a dataset (data.dataset.SpriteDataset is one): per-image entity ids
    and kind labels, in dataset order."""

    entities: list[str]
    kinds: Any


@dataclass(frozen=True)
class EntitySplit:
    """Image indices of the training and held-out sides, and the counts a run records."""

    train: list[int]
    heldout: list[int]
    seed: int
    heldout_fraction: float
    train_entities: int
    heldout_entities: int

    def params(self, prefix: str = "split.") -> dict[str, int | float]:
        """The split as run parameters (MLflow params under `split.`)."""
        return {
            f"{prefix}seed": self.seed,
            f"{prefix}heldout_fraction": self.heldout_fraction,
            f"{prefix}train_entities": self.train_entities,
            f"{prefix}heldout_entities": self.heldout_entities,
            f"{prefix}train_images": len(self.train),
            f"{prefix}heldout_images": len(self.heldout),
        }

    def describe(self) -> str:
        """One line for a plan or a log."""
        return (f"held out {self.heldout_entities} entities ({len(self.heldout)} images), training on "
                f"{self.train_entities} entities ({len(self.train)} images); split seed {self.seed}")


def entity_groups(entities: Sequence[str]) -> list[list[int]]:
    """Image indices grouped by entity id, groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, entity in enumerate(entities):
        groups.setdefault(entity, []).append(index)
    return list(groups.values())


def _choose_heldout(groups: list[list[int]], kinds: list[int], count: int, seed: int) -> list[list[int]]:
    """`count` entities drawn in a seeded order, preferring entities whose kind keeps at least one
    other entity in training (so every kind stays learnable), then any entity if more are needed."""
    rng = np.random.default_rng(seed)
    order = [groups[i] for i in rng.permutation(len(groups))]
    per_kind: dict[int, int] = {}
    for group in groups:
        per_kind[kinds[group[0]]] = per_kind.get(kinds[group[0]], 0) + 1
    chosen: list[list[int]] = []
    for group in order:
        kind = kinds[group[0]]
        if len(chosen) < count and per_kind[kind] > 1:
            chosen.append(group)
            per_kind[kind] -= 1
    for group in order:
        if len(chosen) < count and group not in chosen:
            chosen.append(group)
    return chosen


def heldout_entity_count(total_entities: int, heldout_fraction: float) -> int:
    """round(fraction x entities), at least one when the fraction is > 0 and there are two or more
    entities, never all of them."""
    count = round(heldout_fraction * total_entities)
    if heldout_fraction > 0 and total_entities >= 2:
        count = min(max(count, 1), total_entities - 1)
    return count


def split_by_entity(dataset: EntityLabelled, *, heldout_fraction: float, seed: int = 0,
                    min_heldout_images: int = MIN_HELDOUT_IMAGES) -> EntitySplit:
    """Split a dataset's images by whole entity; DatasetError (exit 2) when the split is too small.

    The entities drawn are those `data.dataset.split_indices` draws for the same fraction and seed, so
    a trainer switching to this function keeps its split. `min_heldout_images` is the rule for "too
    small to measure" (module docstring); 0 allows an empty held-out side (fraction 0).
    """
    if not 0 <= heldout_fraction < 1:
        raise DatasetError(f"data.val_fraction {heldout_fraction}: expected a value in [0, 1)")
    kinds = [int(k) for k in dataset.kinds]
    groups = entity_groups(dataset.entities)
    count = heldout_entity_count(len(groups), heldout_fraction)
    chosen = _choose_heldout(groups, kinds, count, seed)
    heldout = sorted(i for group in chosen for i in group)
    held = set(heldout)
    train = [i for i in range(len(dataset.entities)) if i not in held]
    split = EntitySplit(train=train, heldout=heldout, seed=seed, heldout_fraction=heldout_fraction,
                        train_entities=len(groups) - len(chosen), heldout_entities=len(chosen))
    problems = []
    if min_heldout_images > 0 and len(groups) < 2:
        problems.append(f"the dataset has {len(groups)} entit{'y' if len(groups) == 1 else 'ies'}; "
                        "a held-out split needs at least 2 (one to train on, one to hold out)")
    elif len(heldout) < min_heldout_images:
        problems.append(
            f"data.val_fraction {heldout_fraction} holds out {len(chosen)} of {len(groups)} entities, "
            f"{len(heldout)} of {len(dataset.entities)} images; held-out metrics need at least "
            f"{min_heldout_images} held-out images: raise data.val_fraction or add entities")
    if problems:
        raise DatasetError(problems, title="the held-out split is too small to measure:")
    return split
