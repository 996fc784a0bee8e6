"""SpriteDataset, its augmentation (never mirroring a directional sprite), sampler, split, fingerprint."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import albumentations as A
import numpy as np
import pytest
import torch

from catsith_sweep.data import vocab
from catsith_sweep.data.augment import SpriteAugment, directional_pipeline
from catsith_sweep.data.dataset import EntityBatchSampler, SpriteDataset, fingerprint, split_indices
from catsith_sweep.data.synth import synth_dataset
from catsith_sweep.errors import DatasetError

torch.set_num_threads(1)


def _section(**changes: object) -> SimpleNamespace:
    values = {"enabled": True, "color_jitter_p": 0.5, "brightness": 0.1, "contrast": 0.1, "saturation": 0.1,
              "hue": 0.02, "noise_p": 0.3, "noise_std": (0.004, 0.009), "hflip_p": 0.0}
    return SimpleNamespace(**{**values, **changes})


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "synth"
    synth_dataset(out, seed=3, size=32, variants=2)
    return out


@pytest.fixture(scope="module")
def dataset(root: Path) -> SpriteDataset:
    return SpriteDataset(root)


def test_items_and_accessors(dataset: SpriteDataset) -> None:
    assert len(dataset) == 122 and dataset.images.shape == (122, 4, 32, 32) and not dataset.has_augment
    item = dataset[3]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (4, 32, 32)
    assert item["image"].min() >= 0 and item["image"].max() <= 1
    assert item["entity"] == "ship_fighter_v0" and item["direction"] == 3 and item["directions"] == 8
    assert item["category"] == 0 and item["kind"] == vocab.kind_label("vehicle", "fighter")
    assert "facing down-right" in item["caption"] and item["caption"] == dataset.captions[3]
    last = dataset[len(dataset) - 1]
    assert last["direction"] == -1 and last["directions"] == 1
    assert last["kind"] == vocab.KIND_LABELS.index("environment/planet") and last["category"] == 2
    labels = dataset.labels
    assert labels["direction"].tolist().count(-1) == 26 and labels["kind"].dtype == torch.int64
    item["image"].zero_()  # editing an item never changes the cache
    assert dataset.images[3].sum() > 0


def test_size_mismatch_refused(root: Path) -> None:
    with pytest.raises(DatasetError, match="expected 64x64"):
        SpriteDataset(root, size=64)


def test_hflip_never_mirrors_directional_always_mirrors_others(root: Path, dataset: SpriteDataset) -> None:
    aug = SpriteAugment(_section(hflip_p=1.0, color_jitter_p=0.0, noise_p=0.0), seed=0)
    flipping = SpriteDataset(root, augment=aug)
    assert flipping.has_augment
    checked = 0
    for i in range(len(dataset)):
        got, original = flipping[i]["image"], dataset.images[i]
        if int(dataset.entity_directions[i]) > 1:
            assert torch.equal(got, original), i
        elif not torch.equal(original, original.flip(-1)):  # asymmetric: the flip must show
            assert torch.equal(got, original.flip(-1)), i
            checked += 1
    assert checked >= 5


def test_colour_changes_keep_alpha_exactly(dataset: SpriteDataset) -> None:
    aug = SpriteAugment(_section(color_jitter_p=1.0, noise_p=1.0, brightness=0.4, hue=0.1), seed=1)
    pixels = (dataset.images[10].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    out = aug(pixels, directions=8)
    assert np.array_equal(out[..., 3], pixels[..., 3])
    assert not np.array_equal(out[..., :3], pixels[..., :3])
    clear = pixels[..., 3] == 0
    assert np.array_equal(out[clear], pixels[clear])  # invisible pixels stay clean


def test_disabled_section_is_a_no_op(dataset: SpriteDataset) -> None:
    aug = SpriteAugment(_section(enabled=False, hflip_p=1.0, color_jitter_p=1.0, noise_p=1.0), seed=0)
    pixels = (dataset.images[-1].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(aug(pixels, directions=1), pixels)


def test_directional_pipeline_rejects_geometry() -> None:
    with pytest.raises(DatasetError, match="HorizontalFlip: a geometric transform"):
        directional_pipeline(_section(), extra=[A.HorizontalFlip(p=1.0)])
    with pytest.raises(DatasetError, match="Rotate"):
        directional_pipeline(_section(), extra=[A.Rotate(p=1.0)])
    assert len(directional_pipeline(_section(), extra=[A.Blur(p=0.1)]).transforms) == 3


def test_entity_batches(dataset: SpriteDataset) -> None:
    sampler = EntityBatchSampler(dataset, batch_size=16, seed=5)
    assert len(sampler) == len(list(EntityBatchSampler(dataset, 16, 5)))
    epoch0, epoch1 = list(sampler), list(sampler)
    assert epoch0 != epoch1 and epoch0 == list(EntityBatchSampler(dataset, 16, 5))
    assert epoch0 != list(EntityBatchSampler(dataset, 16, 6))
    for batches in (epoch0, epoch1):
        assert sorted(i for b in batches for i in b) == list(range(len(dataset)))
        assert all(len(b) <= 16 for b in batches)
        where = {i: n for n, b in enumerate(batches) for i in b}
        for entity in set(dataset.entities):
            assert len({where[i] for i, e in enumerate(dataset.entities) if e == entity}) == 1
    small = list(EntityBatchSampler(dataset, batch_size=3, seed=0, indices=range(0, 16)))
    assert [len(b) for b in small] and sorted(i for b in small for i in b) == list(range(16))


def test_split_by_entity(dataset: SpriteDataset) -> None:
    train, val = split_indices(dataset, 0.15, seed=0)
    assert sorted(train + val) == list(range(len(dataset))) and (train, val) == split_indices(dataset, 0.15, 0)
    val_entities = {dataset.entities[i] for i in val}
    assert len(val_entities) == round(0.15 * 38) and not val_entities & {dataset.entities[i] for i in train}
    assert set(dataset.kinds[train].tolist()) == set(dataset.kinds.tolist())  # every kind still trained
    assert split_indices(dataset, 0.15, seed=1) != (train, val)
    assert split_indices(dataset, 0.0, seed=0) == (list(range(len(dataset))), [])
    with pytest.raises(DatasetError):
        split_indices(dataset, 1.0)


def test_fingerprint(root: Path, tmp_path: Path) -> None:
    first = fingerprint(root)
    assert first == fingerprint(root) and len(first) == 64
    (root / "notes.txt").write_text("not part of the dataset")
    assert fingerprint(root) == first
    caption = root / "captions" / "ship_scout_v1_2.txt"
    text = caption.read_text()
    caption.write_text(text + " ")
    try:
        assert fingerprint(root) != first
    finally:
        caption.write_text(text)
        (root / "notes.txt").unlink()
    assert fingerprint(root) == first
