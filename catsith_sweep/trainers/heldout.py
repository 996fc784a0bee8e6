"""The held-out split every trainer uses, as plain functions (LoRA, full, VAE, distillation).

The rule, in one place: a trainer splits its dataset with `experiment_split` (whole entities,
`data.val_fraction` of them held out, drawn with `data.split_seed`), trains only on `split.train`,
and computes every selection metric on `split.heldout`; the sprite feature network behind those
metrics is trained on `split.train` only (`trainers.sampling.sprite_net`). The run records the split
once as params under `split.` (`split_params`, returned by the trainer's `run_params`). A split too
small to measure is refused with DatasetError (exit 2) naming the numbers: at trial setup, and
earlier by the plan (`planned_split`), which reads the dataset's labels without decoding a pixel.

`data.split_seed`, not `train.seed`, seeds the split, so trials that search `train.seed` still hold
out the same entities and their metrics compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from catsith_sweep.data.split import EntitySplit, split_by_entity

if TYPE_CHECKING:
    from catsith_sweep.config.schema import Experiment


def experiment_split(experiment: Experiment, dataset: Any) -> EntitySplit:
    """The experiment's held-out split of `dataset` (a SpriteDataset, or anything with per-image
    `entities` and `kinds` in dataset order); DatasetError when it is too small to measure."""
    data = experiment.data
    return split_by_entity(dataset, heldout_fraction=data.val_fraction, seed=data.split_seed)


def random_batches_per_epoch(experiment: Experiment, dataset: Any) -> int:
    """Micro-batches in one pass over the training split, for trainers that draw batches at random with
    replacement (LoRA, full, distill): what `train.epochs` counts for them."""
    return -(-len(experiment_split(experiment, dataset).train) // experiment.train.batch_size)


def split_params(split: EntitySplit) -> dict[str, str]:
    """The split as run params (`split.seed`, `split.heldout_images`, ...), values as text."""
    return {key: str(value) for key, value in split.params().items()}


@dataclass(frozen=True)
class _Labels:
    """Per-image entity ids and kinds, what `split_by_entity` reads (data.split.EntityLabelled)."""

    entities: list[str]
    kinds: list[int]


def dataset_labels(root: Any, size: int | None = None) -> _Labels:
    """Entity ids and kind labels of a dataset folder in SpriteDataset's order, read from its
    metadata and captions with no image decoded (what a plan can afford)."""
    from pathlib import Path

    from catsith_sweep.data import vocab
    from catsith_sweep.data.validate import inspect_dataset

    # Validates everything SpriteDataset would (DatasetError otherwise); on a valid dataset its
    # sprites are the metadata's files, entity by entity, in order: the rows read here.
    meta = inspect_dataset(Path(root), size, keep_pixels=False).metadata
    rows = [entity for entity in meta.entities for _ in entity.files]
    return _Labels(entities=[e.id for e in rows], kinds=[vocab.kind_label(e.category, e.kind) for e in rows])


def planned_split(experiment: Experiment) -> EntitySplit:
    """The split trials of `experiment` will use, for `run` and `run --dry-run` to show (and refuse
    when too small) before any trial starts. The dataset must exist (synth sets: after `prepare`)."""
    from catsith_sweep.data.source import dataset_root

    root = dataset_root(experiment.data, experiment.model.cache_dir)
    return experiment_split(experiment, dataset_labels(root, experiment.data.resolution))
