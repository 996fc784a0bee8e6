"""The sprite feature network trains on the training split only, and is cached per split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from catsith_sweep.data.dataset import SpriteDataset, fingerprint
from catsith_sweep.data.split import split_by_entity
from catsith_sweep.data.synth import synth_dataset
from catsith_sweep.models import sprite_net as module

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("netsplit") / "synth"
    synth_dataset(out, seed=2, size=16, variants=2)
    return out


def _rows(images: torch.Tensor) -> set[bytes]:
    return {(image * 255).round().byte().numpy().tobytes() for image in images}


def test_sprite_net_never_sees_a_heldout_image(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = SpriteDataset(root)
    split = split_by_entity(dataset, heldout_fraction=0.3, seed=4)
    seen: list[torch.Tensor] = []
    real_train = module.train_sprite_net

    def spy(images: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        seen.append(images.clone())
        return real_train(images, *args, **kwargs)

    monkeypatch.setattr(module, "train_sprite_net", spy)
    net = module.sprite_net_for_dataset(root, tmp_path, train_indices=split.train, steps=3)
    (trained_on,) = seen
    heldout_rows = _rows(dataset.images[split.heldout])
    # Every held-out image differs from every training one (different designs), so this test can fail.
    assert not heldout_rows & _rows(dataset.images[split.train])
    assert not heldout_rows & _rows(trained_on)
    assert _rows(trained_on) == _rows(dataset.images[split.train]) and len(trained_on) == len(split.train)
    assert net.config.training["images"] == len(split.train)
    # The cache key names the split: the entry is not the whole-dataset one.
    entries = [p.name for p in (tmp_path / "sprite_nets").iterdir() if not p.name.startswith(".")]
    assert entries == [fingerprint(root) + module.training_set_key([dataset.names[i] for i in split.train])]


def test_cached_per_split(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = SpriteDataset(root)
    a = split_by_entity(dataset, heldout_fraction=0.3, seed=0)
    b = split_by_entity(dataset, heldout_fraction=0.3, seed=1)
    module.sprite_net_for_dataset(root, tmp_path, train_indices=a.train, steps=2)
    trained = []
    real_train = module.train_sprite_net
    monkeypatch.setattr(module, "train_sprite_net", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    module.sprite_net_for_dataset(root, tmp_path, train_indices=a.train, steps=2)
    assert trained == []  # same split: loaded from the cache
    module.sprite_net_for_dataset(root, tmp_path, train_indices=b.train, steps=2)
    assert trained == [1]  # another split: another net
    assert len([p for p in (tmp_path / "sprite_nets").iterdir() if not p.name.startswith(".")]) == 2


def test_bad_indices_refused(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_indices must lie in"):
        module.sprite_net_for_dataset(root, tmp_path, train_indices=[0, 10_000])
    with pytest.raises(ValueError, match="needs two"):
        module.sprite_net_for_dataset(root, tmp_path, train_indices=[0])
