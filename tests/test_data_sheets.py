"""import_sheet: grids on a colour key, rotation strips, palette formats, appending, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catsith_sweep.data.metadata import load_metadata
from catsith_sweep.data.sheets import direction_frames, import_sheet
from catsith_sweep.data.validate import validate_dataset
from catsith_sweep.errors import DatasetError

MAGENTA = (255, 0, 255)


def _grid_sheet(path: Path, cols: int = 4, rows: int = 4, frame: int = 32, used: int | None = None) -> None:
    """A grid on magenta; frame j has a (j+1)-pixel-high green bar (so frames are distinguishable)."""
    sheet = np.zeros((rows * frame, cols * frame, 3), dtype=np.uint8)
    sheet[:] = MAGENTA
    for j in range(used if used is not None else cols * rows):
        r, c = divmod(j, cols)
        sheet[r * frame + 4: r * frame + 5 + j, c * frame + 8: c * frame + 24] = (40, 200, 90)
    Image.fromarray(sheet, "RGB").save(path)


def _rotation_strip(path: Path, count: int = 16, w: int = 20, h: int = 24) -> None:
    """A strip of `count` frames; frame j is marked by its red value 10*j in one block."""
    strip = np.zeros((h, count * w, 4), dtype=np.uint8)
    for j in range(count):
        strip[8:16, j * w + 6: j * w + 14] = (10 * j, 100, 50, 255)
    Image.fromarray(strip, "RGBA").save(path)


def _marker(root: Path, name: str) -> int:
    pixels = np.asarray(Image.open(root / "images" / name))
    return int(pixels[pixels[..., 3] > 0, 0][0]) // 10


def test_grid_on_magenta(tmp_path: Path) -> None:
    _grid_sheet(tmp_path / "rocks.png")
    report = import_sheet(tmp_path / "rocks.png", tmp_path / "ds", grid=(4, 4), category="environment",
                          kind="asteroid", color_key="auto", size=64)
    assert (report.images, report.entities, report.size) == (16, 1, 64)
    entity = load_metadata(tmp_path / "ds").entities[0]
    assert entity.id == "environment_asteroid_rocks" and len(entity.files) == 16
    assert entity.base_color == (40, 200, 90)
    frame = np.asarray(Image.open(tmp_path / "ds" / "images" / entity.files[5]))
    assert frame.shape == (64, 64, 4) and set(np.unique(frame[..., 3])) == {0, 255}
    assert (frame[..., 3] == 0).sum() > 64 * 64 * 0.8 and not frame[frame[..., 3] == 0, :3].any()
    assert (frame[frame[..., 3] > 0, :3] == (40, 200, 90)).all()  # no magenta left, nearest scaling
    assert (frame[..., 3] > 0).sum() == 32 * (6 * 2)  # a 16x6 bar doubled: 32x12
    caption = (tmp_path / "ds" / "captions" / f"{entity.files[0][:-4]}.txt").read_text().strip()
    assert caption == "pixel art game sprite, asteroid environment, green colored, transparent background, " \
                      "16-bit retro style"


def test_frame_size_and_trailing_empty_cells(tmp_path: Path) -> None:
    _grid_sheet(tmp_path / "g.png", used=13)
    import_sheet(tmp_path / "g.png", tmp_path / "ds", frame_size=(32, 32), category="projectile",
                 kind="plasma", color_key=MAGENTA, size=32, entity_id="plasma")
    assert len(load_metadata(tmp_path / "ds").entities[0].files) == 13
    import_sheet(tmp_path / "g.png", tmp_path / "ds", frame_size=(32, 32), frames=2, category="projectile",
                 kind="bomb", color_key=MAGENTA, size=32, entity_id="bomb")
    assert validate_dataset(tmp_path / "ds").images == 15


@pytest.mark.parametrize(("first", "ccw", "expected"), [
    (0, False, [0, 2, 4, 6, 8, 10, 12, 14]),
    (2, False, [12, 14, 0, 2, 4, 6, 8, 10]),
    (0, True, [0, 14, 12, 10, 8, 6, 4, 2]),
])
def test_rotation_strip_direction_mapping(tmp_path: Path, first: int, ccw: bool, expected: list[int]) -> None:
    _rotation_strip(tmp_path / "ship.png")
    report = import_sheet(tmp_path / "ship.png", tmp_path / "ds", frame_size=(20, 24), category="vehicle",
                          kind="fighter", directions=8, size=48, first_direction=first, counter_clockwise=ccw)
    assert report.images == 8
    entity = load_metadata(tmp_path / "ds").entities[0]
    assert entity.files == [f"ship_fighter_ship_{d}.png" for d in range(8)]
    assert [_marker(tmp_path / "ds", name) for name in entity.files] == expected
    caption = (tmp_path / "ds" / "captions" / "ship_fighter_ship_2.txt").read_text()
    assert "fighter vehicle, facing right" in caption
    assert direction_frames(16, 8, first, ccw) == expected


def test_padding_keeps_frame_centred(tmp_path: Path) -> None:
    _rotation_strip(tmp_path / "ship.png", count=8, w=20, h=10)
    import_sheet(tmp_path / "ship.png", tmp_path / "ds", grid=(8, 1), category="vehicle", kind="scout",
                 directions=8, size=20)
    alpha = np.asarray(Image.open(tmp_path / "ds" / "images" / "ship_scout_ship_0.png"))[..., 3]
    rows = np.nonzero(alpha.any(axis=1))[0]
    assert (rows.min(), rows.max()) == (8 + 5, 9 + 5)  # rows 8-9 of a 10 px high frame, padded by 5 above


@pytest.mark.parametrize("fmt", ["BMP", "GIF"])
def test_palette_sheet_with_black_key(tmp_path: Path, fmt: str) -> None:
    sheet = Image.new("P", (48, 16), 0)
    sheet.putpalette([0, 0, 0, 255, 128, 0] + [0] * 762)
    for x in range(0, 48, 16):
        sheet.paste(1, (x + 4, 4, x + 12, 12))
    path = tmp_path / f"bombs.{fmt.lower()}"
    sheet.save(path, format=fmt)
    report = import_sheet(path, tmp_path / "ds", frame_size=(16, 16), category="projectile", kind="bomb",
                          color_key=(0, 0, 0), size=16)
    assert report.images == 3
    frame = np.asarray(Image.open(tmp_path / "ds" / "images" / "projectile_bomb_bombs_0.png"))
    assert (frame[..., 3] > 0).sum() == 64 and (frame[4, 4] == (255, 128, 0, 255)).all()


def test_appends_and_refuses_duplicates(tmp_path: Path) -> None:
    _grid_sheet(tmp_path / "a.png", 2, 1)
    args = {"grid": (2, 1), "category": "environment", "kind": "debris", "color_key": "auto", "size": 32}
    import_sheet(tmp_path / "a.png", tmp_path / "ds", **args)
    import_sheet(tmp_path / "a.png", tmp_path / "ds", entity_id="more_debris", **args)
    assert [e.id for e in load_metadata(tmp_path / "ds").entities] == ["environment_debris_a", "more_debris"]
    before = (tmp_path / "ds" / "metadata.json").read_bytes()
    with pytest.raises(DatasetError, match="entity id 'more_debris' already exists"):
        import_sheet(tmp_path / "a.png", tmp_path / "ds", entity_id="more_debris", **args)
    with pytest.raises(DatasetError, match="holds 32x32 sprites; import with size 32"):
        import_sheet(tmp_path / "a.png", tmp_path / "ds", entity_id="x", **dict(args, size=64))
    assert (tmp_path / "ds" / "metadata.json").read_bytes() == before
    assert validate_dataset(tmp_path / "ds").images == 4


def test_refusals(tmp_path: Path) -> None:
    _grid_sheet(tmp_path / "s.png", 3, 1)
    with pytest.raises(DatasetError) as info:
        import_sheet(tmp_path / "s.png", tmp_path / "ds", grid=(3, 1), category="projectile", kind="fighter",
                     directions=8, size=4, first_direction=9, entity_id="../up")
    assert len(info.value.problems) == 5
    with pytest.raises(DatasetError, match="needs a multiple of 8 frames"):
        import_sheet(tmp_path / "s.png", tmp_path / "ds", grid=(3, 1), category="vehicle", kind="fighter",
                     directions=8)
    with pytest.raises(DatasetError, match="not a whole number of 40x32 frames"):
        import_sheet(tmp_path / "s.png", tmp_path / "ds", frame_size=(40, 32), category="vehicle", kind="bomber")
    with pytest.raises(DatasetError, match="give a frame size"):
        import_sheet(tmp_path / "s.png", tmp_path / "ds", category="vehicle", kind="bomber")
    with pytest.raises(DatasetError, match="every frame is empty"):
        import_sheet(_blank(tmp_path), tmp_path / "ds", grid=(1, 1), category="vehicle", kind="bomber",
                     color_key="auto")
    (tmp_path / "s.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="cannot read as an image"):
        import_sheet(tmp_path / "s.txt", tmp_path / "ds", grid=(1, 1), category="vehicle", kind="bomber")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="has no metadata.json"):
        import_sheet(tmp_path / "s.png", tmp_path / "other", grid=(3, 1), category="vehicle", kind="bomber")
    assert not (tmp_path / "ds").exists()


def _blank(tmp_path: Path) -> Path:
    Image.new("RGB", (16, 16), MAGENTA).save(tmp_path / "blank.png")
    return tmp_path / "blank.png"


def test_xpm_sheet(tmp_path: Path) -> None:
    xpm = ['/* XPM */', 'static char *s[] = {', '"8 4 2 1",', '"  c #FF00FF",', '"x c #00FF00",']
    xpm += ['"  xx  xx",', '" xx  xx ",', '"  xx  xx",', '"        ",', '};']
    (tmp_path / "s.xpm").write_text("\n".join(xpm))
    import_sheet(tmp_path / "s.xpm", tmp_path / "ds", frame_size=(4, 4), category="projectile", kind="laser",
                 color_key="auto", size=8)
    meta = json.loads((tmp_path / "ds" / "metadata.json").read_text())
    assert meta["entities"][0]["files"] == ["projectile_laser_s_0.png", "projectile_laser_s_1.png"]
    assert meta["entities"][0]["base_color"] == [0, 255, 0]


def test_given_base_color_is_used_and_checked(tmp_path: Path) -> None:
    _grid_sheet(tmp_path / "g.png", 2, 1)
    args = {"grid": (2, 1), "category": "environment", "kind": "nebula", "color_key": "auto", "size": 32}
    import_sheet(tmp_path / "g.png", tmp_path / "ds", base_color=(200, 40, 60), **args)
    assert load_metadata(tmp_path / "ds").entities[0].base_color == (200, 40, 60)
    caption = (tmp_path / "ds" / "captions" / "environment_nebula_g_0.txt").read_text()
    assert "nebula environment, red colored" in caption
    with pytest.raises(DatasetError, match=r"base_color \(1, 2, 300\): expected \(r, g, b\)"):
        import_sheet(tmp_path / "g.png", tmp_path / "ds", entity_id="x", base_color=(1, 2, 300), **args)


def _ship_sheet(path: Path, background: tuple[int, int, int], *, outline: tuple[int, int, int] = (10, 10, 10),
                quality: int | None = None) -> np.ndarray:
    """2x1 frames of 32 px on `background`: a body with a cockpit of the background colour inside it
    and an outline column touching... nothing (inside the body). Returns the sprite mask."""
    sheet = np.zeros((32, 64, 3), dtype=np.uint8)
    sheet[:] = background
    mask = np.zeros((32, 64), dtype=bool)
    for x in (0, 32):
        sheet[6:26, x + 8:x + 24] = (200, 180, 60)
        sheet[6:26, x + 8] = outline  # an outline column on the body's left edge, touching the background
        sheet[12:18, x + 13:x + 19] = background  # cockpit: the key colour, enclosed by the body
        mask[6:26, x + 8:x + 24] = True
    if quality is None:
        Image.fromarray(sheet, "RGB").save(path)
    else:
        Image.fromarray(sheet, "RGB").save(path, format="JPEG", quality=quality)
    return mask


def _alpha_sheet(root: Path) -> np.ndarray:
    """The imported frames as they were on the sheet (size 32 = frame size, so no scaling)."""
    frames = [np.asarray(Image.open(root / "images" / n))[..., 3] > 0 for n in load_metadata(root).entities[0].files]
    return np.concatenate(frames, axis=1)


def test_auto_key_floods_from_frame_borders_only(tmp_path: Path) -> None:
    mask = _ship_sheet(tmp_path / "ships.png", (0, 0, 0), outline=(20, 20, 20))
    import_sheet(tmp_path / "ships.png", tmp_path / "ds", grid=(2, 1), category="vehicle", kind="fighter",
                 color_key="auto", size=32)
    opaque = _alpha_sheet(tmp_path / "ds")
    assert (opaque == mask).all()  # the black cockpit and the dark outline stay; all background goes


def test_auto_key_on_a_jpeg_sheet(tmp_path: Path) -> None:
    mask = _ship_sheet(tmp_path / "ships.jpg", (255, 0, 255), outline=(200, 180, 60), quality=75)
    import_sheet(tmp_path / "ships.jpg", tmp_path / "ds", grid=(2, 1), category="vehicle", kind="fighter",
                 color_key="auto", size=32)
    opaque = _alpha_sheet(tmp_path / "ds")
    # Before: 4 of 624 background pixels keyed. What stays is the 1 px fringe JPEG smears around sprites.
    assert (~opaque & ~mask).sum() > 0.85 * (~mask).sum()
    assert (opaque & mask).sum() > 0.95 * mask.sum()


def test_auto_key_warns_when_little_is_keyed(tmp_path: Path) -> None:
    sheet = np.full((32, 64, 3), (0, 0, 255), dtype=np.uint8)
    sheet[1:, :] = (250, 250, 250)  # the corner pixel is not the background
    sheet[8:24, 8:24] = sheet[8:24, 40:56] = (200, 0, 0)
    Image.fromarray(sheet, "RGB").save(tmp_path / "odd.png")
    seen: list[str] = []
    import_sheet(tmp_path / "odd.png", tmp_path / "ds", grid=(2, 1), category="vehicle", kind="fighter",
                 color_key="auto", size=32, warn=seen.append)
    assert len(seen) == 1 and "keyed only" in seen[0] and "(0, 0, 255)" in seen[0]
    with pytest.warns(UserWarning, match="keyed only"):
        import_sheet(tmp_path / "odd.png", tmp_path / "ds2", grid=(2, 1), category="vehicle", kind="fighter",
                     color_key="auto", size=32)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    grey = np.zeros((16, 32), dtype=np.uint16)
    grey[4:12, 4:12] = 32768  # mid grey in 16 bits
    grey[4:12, 20:28] = 65535
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode in ("I;16", "I")
    import_sheet(tmp_path / "grey16.png", tmp_path / "ds", grid=(2, 1), category="projectile", kind="bullet",
                 color_key=(0, 0, 0), size=16)
    frames = [np.asarray(Image.open(tmp_path / "ds" / "images" / n)) for n in
              load_metadata(tmp_path / "ds").entities[0].files]
    assert tuple(frames[0][8, 8]) == (128, 128, 128, 255) and tuple(frames[1][8, 8]) == (255, 255, 255, 255)


def test_size_and_sheet_bounds(tmp_path: Path) -> None:
    _grid_sheet(tmp_path / "s.png", 2, 1)
    with pytest.raises(DatasetError, match="size 60000: expected 8 to 1024 px"):
        import_sheet(tmp_path / "s.png", tmp_path / "ds", grid=(2, 1), category="vehicle", kind="fighter",
                     size=60000)
    assert not (tmp_path / "ds").exists()
