"""validate_dataset: a corpus of broken datasets built in code, each naming the right problem."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catsith_sweep.data.metadata import load_metadata
from catsith_sweep.data.validate import validate_dataset
from catsith_sweep.errors import DatasetError

SIZE = 16


def _png(path: Path, size: int | tuple[int, int] = SIZE, mode: str = "RGBA") -> None:
    w, h = (size, size) if isinstance(size, int) else size
    pixels = np.zeros((h, w, 4), dtype=np.uint8)
    pixels[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = (64, 192, 128, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGBA").convert(mode).save(path, format="PNG")


def make_dataset(root: Path) -> Path:
    """A small valid dataset: one 8-direction fighter and one bullet."""
    fighter = [f"ship_fighter_{d}.png" for d in range(8)]
    meta = {
        "version": "1.0", "style": "pixel_art_16bit",
        "entities": [
            {"id": "ship_fighter", "category": "vehicle", "kind": "fighter", "directions": 8,
             "base_color": [64, 192, 128], "files": fighter},
            {"id": "projectile_bullet", "category": "projectile", "kind": "bullet", "directions": 1,
             "base_color": [255, 255, 0], "files": ["projectile_bullet.png"]},
        ],
    }
    for name in [*fighter, "projectile_bullet.png"]:
        _png(root / "images" / name)
        (root / "captions").mkdir(parents=True, exist_ok=True)
        (root / "captions" / name.replace(".png", ".txt")).write_text("a caption\n")
    (root / "metadata.json").write_text(json.dumps(meta))
    return root


def _edit_meta(root: Path, change: Callable[[dict], None]) -> None:
    meta = json.loads((root / "metadata.json").read_text())
    change(meta)
    (root / "metadata.json").write_text(json.dumps(meta))


def _fighter(meta: dict) -> dict:
    return meta["entities"][0]


def _rename_file(meta: dict, new: str) -> None:
    _fighter(meta)["files"][0] = new


def _symlink_outside(root: Path) -> None:
    outside = root.parent / f"{root.name}-outside.png"
    _png(outside)
    (root / "images" / "ship_fighter_0.png").unlink()
    os.symlink(outside, root / "images" / "ship_fighter_0.png")


BROKEN: list[tuple[str, Callable[[Path], None], str]] = [
    ("no metadata", lambda r: (r / "metadata.json").unlink(), "metadata.json: missing"),
    ("bad json", lambda r: (r / "metadata.json").write_text("{nope"), "metadata.json: not valid JSON"),
    ("colour range", lambda r: _edit_meta(r, lambda m: _fighter(m).update(base_color=[64, 300, 128])),
     "metadata.json: entities[0].base_color[1]: Input should be less than or equal to 255"),
    ("colour length", lambda r: _edit_meta(r, lambda m: _fighter(m).update(base_color=[64, 192])),
     "entities[0].base_color"),
    ("colour float", lambda r: _edit_meta(r, lambda m: _fighter(m).update(base_color=[64, 19.5, 128])),
     "entities[0].base_color[1]: Input should be a valid integer"),
    ("unknown key", lambda r: _edit_meta(r, lambda m: _fighter(m).update(colour="green")),
     "metadata.json: entities[0].colour: unknown key"),
    ("missing key", lambda r: _edit_meta(r, lambda m: _fighter(m).pop("kind")),
     "metadata.json: entities[0].kind: required key is missing"),
    ("missing image", lambda r: (r / "images" / "ship_fighter_3.png").unlink(),
     "images/ship_fighter_3.png: missing (listed in metadata.json)"),
    ("extra image", lambda r: _png(r / "images" / "stray.png"),
     "images/stray.png: not listed in any entity's files"),
    ("missing caption", lambda r: (r / "captions" / "ship_fighter_0.txt").unlink(),
     "captions/ship_fighter_0.txt: missing caption"),
    ("empty caption", lambda r: (r / "captions" / "projectile_bullet.txt").write_text("  \n"),
     "captions/projectile_bullet.txt: empty caption"),
    ("corrupt png", lambda r: (r / "images" / "ship_fighter_1.png").write_bytes(
        (r / "images" / "ship_fighter_1.png").read_bytes()[:60]), "images/ship_fighter_1.png: corrupt PNG"),
    ("not png", lambda r: Image.new("RGB", (SIZE, SIZE)).save(r / "images" / "ship_fighter_2.png", "BMP"),
     "images/ship_fighter_2.png: not a PNG file"),
    ("rgb mode", lambda r: _png(r / "images" / "ship_fighter_2.png", mode="RGB"),
     "images/ship_fighter_2.png: mode RGB; expected RGBA"),
    ("wrong size", lambda r: _png(r / "images" / "projectile_bullet.png", 32),
     "images/projectile_bullet.png: 32x32; expected 16x16"),
    ("not square", lambda r: _png(r / "images" / "ship_fighter_5.png", (16, 12)),
     "images/ship_fighter_5.png: 16x12 is not square"),
    ("dot dot", lambda r: _edit_meta(r, lambda m: _rename_file(m, "../x.png")),
     "entities[0] (ship_fighter).files[0]: '../x.png': leaves the dataset folder"),
    ("absolute", lambda r: _edit_meta(r, lambda m: _rename_file(m, "/etc/x.png")),
     "'/etc/x.png': absolute path"),
    ("symlink outside", _symlink_outside, "which leaves the dataset folder"),
    ("duplicate id", lambda r: _edit_meta(r, lambda m: m["entities"][1].update(id="ship_fighter")),
     "duplicate entity id 'ship_fighter'"),
    ("file count", lambda r: _edit_meta(r, lambda m: _fighter(m)["files"].pop()),
     "entities[0] (ship_fighter).files: 7 file(s); a directional entity lists exactly 8"),
    ("category", lambda r: _edit_meta(r, lambda m: _fighter(m).update(category="creature")),
     "entities[0] (ship_fighter).category: unknown category 'creature'"),
    ("kind", lambda r: _edit_meta(r, lambda m: _fighter(m).update(kind="dragon")),
     "entities[0] (ship_fighter).kind: unknown vehicle kind 'dragon'"),
    ("directions 4", lambda r: _edit_meta(r, lambda m: _fighter(m).update(directions=4)),
     "entities[0] (ship_fighter).directions: 4; a vehicle has 8 or 1 direction(s)"),
    ("directional bullet", lambda r: _edit_meta(r, lambda m: m["entities"][1].update(directions=8)),
     "entities[1] (projectile_bullet).directions: 8; a projectile has 1 direction(s)"),
    ("listed twice", lambda r: _edit_meta(r, lambda m: m["entities"][1].update(files=["ship_fighter_0.png"])),
     "images/ship_fighter_0.png is already listed by entity ship_fighter"),
    ("no entities", lambda r: _edit_meta(r, lambda m: m.update(entities=[])), "entities: empty"),
]


def test_valid_dataset_report(tmp_path: Path) -> None:
    report = validate_dataset(make_dataset(tmp_path / "ds"))
    assert (report.images, report.entities, report.size) == (9, 2, SIZE)
    assert str(report).startswith("9 images, 2 entities, 16x16")


@pytest.mark.parametrize(("mutate", "expected"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_dataset_names_the_problem(tmp_path: Path, mutate: Callable[[Path], None], expected: str) -> None:
    root = make_dataset(tmp_path / "ds")
    mutate(root)
    with pytest.raises(DatasetError) as info:
        validate_dataset(root)
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_requested_size(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    with pytest.raises(DatasetError, match=r"16x16; expected 32x32 \(the requested size\)"):
        validate_dataset(root, size=32)


def test_every_problem_reported_together(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / "images" / "ship_fighter_3.png").unlink()
    (root / "captions" / "projectile_bullet.txt").unlink()
    _png(root / "images" / "ship_fighter_4.png", 32)
    _png(root / "images" / "stray.png")
    _edit_meta(root, lambda m: m["entities"][1].update(kind="rocket"))
    with pytest.raises(DatasetError) as info:
        validate_dataset(root)
    text = "\n".join(info.value.problems)
    for expected in ("unknown projectile kind 'rocket'", "images/ship_fighter_3.png: missing",
                     "captions/projectile_bullet.txt: missing caption", "images/ship_fighter_4.png: 32x32",
                     "images/stray.png: not listed"):
        assert expected in text
    assert len(info.value.problems) == 5
    assert "5 problem(s)" in info.value.render()


def test_one_direction_vehicle_is_allowed(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    _edit_meta(root, lambda m: _fighter(m).update(directions=1, files=["ship_fighter_0.png"]))
    for d in range(1, 8):
        (root / "images" / f"ship_fighter_{d}.png").unlink()
    assert validate_dataset(root).images == 2


def test_missing_folder_and_metadata_together(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as info:
        validate_dataset(tmp_path / "empty")
    assert len(info.value.problems) == 2
    with pytest.raises(DatasetError, match="not a folder"):
        validate_dataset(tmp_path / "nope")


def test_load_metadata_key_path(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    for _ in range(3):
        _edit_meta(root, lambda m: m["entities"].append(dict(m["entities"][1], id=f"b{len(m['entities'])}")))
    _edit_meta(root, lambda m: m["entities"][3].update(base_color=[1, 2, -3]))
    with pytest.raises(DatasetError, match=r"metadata.json: entities\[3\].base_color\[2\]"):
        load_metadata(root)


def test_schema_errors_do_not_hide_file_problems(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    _edit_meta(root, lambda m: _fighter(m).update(base_color=[64, 300, 128], shade=2))
    _edit_meta(root, lambda m: m["entities"][1].update(files=["../up.png", "projectile_bullet.png"]))
    (root / "images" / "ship_fighter_3.png").unlink()
    (root / "captions" / "ship_fighter_5.txt").unlink()
    _png(root / "images" / "stray.png")
    with pytest.raises(DatasetError) as info:
        validate_dataset(root)
    text = "\n".join(info.value.problems)
    for expected in ("entities[0].base_color[1]: Input should be less than or equal to 255",
                     "entities[0].shade: unknown key; allowed keys here: id, category, kind, directions",
                     "entities[1].files[0]: '../up.png': leaves the dataset folder",
                     "images/ship_fighter_3.png: missing", "captions/ship_fighter_5.txt: missing caption",
                     "images/stray.png: not listed"):
        assert expected in text, text
    assert len(info.value.problems) == 6, text


def test_validate_keeps_no_pixels_and_checks_size_before_decoding(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from test_bad_datasets import png_header_only

    from catsith_sweep.data import validate

    root = make_dataset(tmp_path / "ds")
    checked = validate.inspect_dataset(root, keep_pixels=False)
    assert checked.sprites == [] and checked.report.images == 9
    assert len(validate.inspect_dataset(root).sprites) == 9  # training still gets its pixels
    png_header_only(root / "images" / "projectile_bullet.png", 12000, 12000)
    opened: list[str] = []
    real_open = validate.Image.open
    monkeypatch.setattr(validate.Image, "open", lambda fp, *a, **k: (opened.append(str(fp)), real_open(fp, *a, **k))[1])
    with pytest.raises(DatasetError, match=r"12000x12000 px; sprites are at most 1024x1024 \(not decoded\)"):
        validate_dataset(root)
    assert len(opened) == 8  # the eight fighter frames; never the 12000 px one
