"""Captions: the guide's caption_generator word for word, prefix/suffix rules, write_captions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from catsith_sweep.data.captions import generate_caption, write_captions
from catsith_sweep.data.metadata import Metadata, load_metadata, write_metadata
from catsith_sweep.errors import DatasetError

GUIDE_FIGHTER = {"id": "ship_fighter", "kind": "fighter", "category": "vehicle", "directions": 8,
                 "base_color": [64, 192, 128], "files": [f"ship_fighter_{d}.png" for d in range(8)]}
BULLET = {"id": "projectile_bullet", "kind": "bullet", "category": "projectile", "directions": 1,
          "base_color": [255, 255, 0], "files": ["projectile_bullet.png"]}


def test_guide_example_word_for_word() -> None:
    assert generate_caption(GUIDE_FIGHTER, 0) == (
        "pixel art game sprite, fighter vehicle, facing up, green colored, transparent background, "
        "16-bit retro style")


def test_directions_colours_and_non_directional() -> None:
    assert "facing down-left" in generate_caption(GUIDE_FIGHTER, 5)
    assert generate_caption(dict(GUIDE_FIGHTER, base_color=[200, 10, 10]), 2).count("red colored") == 1
    assert "blue colored" in generate_caption(dict(GUIDE_FIGHTER, base_color=[1, 2, 3]), 0)
    # Ties (yellow, grey) and no colour name no colour, as the guide's rule does.
    assert "colored" not in generate_caption(BULLET, 0)
    assert "colored" not in generate_caption(dict(BULLET, base_color=None), 0)
    assert generate_caption(BULLET, 3) == (
        "pixel art game sprite, bullet projectile, transparent background, 16-bit retro style")
    with pytest.raises(DatasetError, match="direction 8 is out of range"):
        generate_caption(GUIDE_FIGHTER, 8)


def test_prefix_and_suffix_replace_fixed_words_without_duplicates() -> None:
    text = generate_caption(GUIDE_FIGHTER, 0, prefix="pixel art game sprite, ",
                            suffix=", transparent background, 16-bit style")
    assert text == ("pixel art game sprite, fighter vehicle, facing up, green colored, transparent background, "
                    "16-bit style")
    text = generate_caption(GUIDE_FIGHTER, 2, prefix="Fighter Vehicle, space", suffix="facing right,,")
    assert text == "Fighter Vehicle, space, facing right, green colored"
    assert generate_caption(BULLET, 0, prefix="", suffix="") == "bullet projectile"


def _dataset(root: Path, captions: dict | None = None) -> Path:
    meta = {"version": "1.0", "style": "s", "entities": [GUIDE_FIGHTER, BULLET]}
    if captions is not None:
        meta["captions"] = captions
    root.mkdir(parents=True)
    (root / "metadata.json").write_text(json.dumps(meta))
    return root


def test_write_captions(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    assert write_captions(root) == 9
    assert (root / "captions" / "ship_fighter_6.txt").read_text().strip().endswith(
        "fighter vehicle, facing left, green colored, transparent background, 16-bit retro style")
    assert sorted(p.name for p in (root / "captions").iterdir()) == sorted(
        f.replace(".png", ".txt") for f in [*GUIDE_FIGHTER["files"], *BULLET["files"]])  # no temp files left


def test_write_captions_uses_metadata_style(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", {"style_prefix": "retro sprite, ", "style_suffix": ", on nothing"})
    write_captions(root)
    assert (root / "captions" / "projectile_bullet.txt").read_text() == (
        "retro sprite, bullet projectile, on nothing\n")


def test_write_captions_refuses_bad_metadata(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    meta = json.loads((root / "metadata.json").read_text())
    meta["entities"][0]["kind"] = "dragon"
    meta["entities"][1]["files"] = ["../escape.png"]
    (root / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError) as info:
        write_captions(root)
    assert len(info.value.problems) == 2
    assert not (root / "captions").exists()


def test_metadata_round_trip(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    meta = load_metadata(root)
    write_metadata(root, meta)
    assert load_metadata(root) == meta
    assert json.loads((root / "metadata.json").read_text())["entities"][0]["base_color"] == [64, 192, 128]
    assert [p.name for p in root.iterdir()] == ["metadata.json"]
    assert isinstance(meta, Metadata) and meta.captions.style_prefix == "pixel art game sprite, "
