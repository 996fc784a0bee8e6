"""The entity split: deterministic, whole entities on one side only, counts, refusal of tiny splits."""

from __future__ import annotations

import pytest
import torch

from catsith_sweep.data.dataset import SpriteDataset, split_indices
from catsith_sweep.data.split import MIN_HELDOUT_IMAGES, split_by_entity
from catsith_sweep.data.synth import synth_dataset
from catsith_sweep.errors import DatasetError, UserInputError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SpriteDataset:
    out = tmp_path_factory.mktemp("split") / "synth"
    synth_dataset(out, seed=1, size=16, variants=2)
    return SpriteDataset(out)


def test_same_seed_same_split_other_seed_other_split(dataset: SpriteDataset) -> None:
    a = split_by_entity(dataset, heldout_fraction=0.3, seed=5)
    b = split_by_entity(dataset, heldout_fraction=0.3, seed=5)
    c = split_by_entity(dataset, heldout_fraction=0.3, seed=6)
    assert a == b
    assert a.heldout != c.heldout


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_entity_on_both_sides_and_every_image_once(dataset: SpriteDataset, seed: int) -> None:
    split = split_by_entity(dataset, heldout_fraction=0.25, seed=seed)
    train_entities = {dataset.entities[i] for i in split.train}
    heldout_entities = {dataset.entities[i] for i in split.heldout}
    assert train_entities and heldout_entities and not train_entities & heldout_entities
    assert sorted(split.train + split.heldout) == list(range(len(dataset)))
    assert (split.train_entities, split.heldout_entities) == (len(train_entities), len(heldout_entities))
    # Every kind keeps an entity in training (2 designs per kind, 25% held out: there is room for that).
    assert {int(dataset.kinds[i]) for i in split.train} == {int(k) for k in dataset.kinds}


def test_same_entities_as_the_vae_trainers_split(dataset: SpriteDataset) -> None:
    for seed in (0, 7):
        split = split_by_entity(dataset, heldout_fraction=0.15, seed=seed)
        assert (split.train, split.heldout) == split_indices(dataset, 0.15, seed)


def test_params_name_the_counts(dataset: SpriteDataset) -> None:
    split = split_by_entity(dataset, heldout_fraction=0.2, seed=3)
    params = split.params()
    assert params == {
        "split.seed": 3, "split.heldout_fraction": 0.2,
        "split.train_entities": split.train_entities, "split.heldout_entities": split.heldout_entities,
        "split.train_images": len(split.train), "split.heldout_images": len(split.heldout),
    }
    assert split.train_entities + split.heldout_entities == len(set(dataset.entities)) == 38
    assert "held out" in split.describe()


def test_too_small_a_split_is_refused_naming_the_numbers(dataset: SpriteDataset) -> None:
    with pytest.raises(DatasetError) as info:
        split_by_entity(dataset, heldout_fraction=0.01, seed=0, min_heldout_images=20)
    text = info.value.render()
    assert "too small to measure" in text and "at least 20 held-out images" in text
    assert "1 of 38 entities" in text and f"of {len(dataset)} images" in text
    with pytest.raises(DatasetError, match=f"at least {MIN_HELDOUT_IMAGES} held-out images"):
        split_by_entity(dataset, heldout_fraction=0.0, seed=0)
    assert split_by_entity(dataset, heldout_fraction=0.0, min_heldout_images=0).heldout == []


def test_one_entity_cannot_be_split() -> None:
    class One:
        entities = ["ship_a"] * 8
        kinds = [0] * 8

    with pytest.raises(DatasetError, match="needs at least 2"):
        split_by_entity(One(), heldout_fraction=0.5, min_heldout_images=1)


def test_bad_fraction_is_a_user_input_error() -> None:
    class Two:
        entities = ["a", "b"]
        kinds = [0, 0]

    with pytest.raises(UserInputError, match=r"expected a value in \[0, 1\)"):  # the CLI's exit 2
        split_by_entity(Two(), heldout_fraction=1.5)
