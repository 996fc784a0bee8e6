"""The procedural exospace set: layout, determinism, hard alpha, 8 true rotations, distinct kinds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catsith_sweep.data import vocab
from catsith_sweep.data.metadata import load_metadata
from catsith_sweep.data.synth import contact_sheet, rotate_labels, synth_dataset
from catsith_sweep.data.synth_styles import HANDHELD_SHADES
from catsith_sweep.data.validate import validate_dataset
from catsith_sweep.errors import DatasetError

GLOW_RGB = (255, 190, 60)  # synth.palette: engine glow
GUIDE_CAPTION = ("pixel art game sprite, fighter vehicle, facing up, green colored, transparent background, "
                 "16-bit retro style")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    synth_dataset(out, seed=0, size=32, variants=2)
    return out


def _alpha(root: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(root / "images" / name))[..., 3]


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_counts_and_validates(synth: Path) -> None:
    report = validate_dataset(synth, size=32)
    assert (report.images, report.entities) == (6 * 2 * 8 + 6 * 2 + 7 * 2, (6 + 6 + 7) * 2)
    meta = load_metadata(synth)
    ids = [e.id for e in meta.entities]
    assert "ship_fighter_v1" in ids and "projectile_laser_v0" in ids and "environment_planet_v1" in ids
    fighter = meta.entities[0]
    assert fighter.files[3] == "ship_fighter_v0_3.png" and fighter.base_color == vocab.BASE_COLORS["vehicle/fighter"]
    assert (synth / "captions" / "ship_fighter_v0_0.txt").read_text().strip() == GUIDE_CAPTION
    assert (synth / "images" / "projectile_bomb_v1.png").is_file()
    assert (synth / "images" / "environment_nebula_v0.png").is_file()


def test_hard_alpha_and_frame_filled(synth: Path) -> None:
    for path in (synth / "images").iterdir():
        alpha = np.asarray(Image.open(path))[..., 3]
        assert set(np.unique(alpha)) <= {0, 255}, path.name
        assert (alpha > 0).mean() > (0.12 if "ship_" in path.name else 0.08), path.name


def test_ships_rotate_through_eight_directions(synth: Path) -> None:
    for kind in vocab.KINDS_BY_CATEGORY["vehicle"]:
        masks = [_alpha(synth, f"ship_{kind}_v0_{d}.png") for d in range(8)]
        for d in range(2, 8):  # a quarter turn clockwise moves direction d-2 to d, exactly
            assert np.array_equal(masks[d], np.rot90(masks[d - 2], k=-1)), (kind, d)
        assert not np.array_equal(masks[0], masks[1])


def _glow_centre(root: Path, name: str) -> np.ndarray:
    rgb = np.asarray(Image.open(root / "images" / name))[..., :3]
    ys, xs = np.nonzero((rgb == GLOW_RGB).all(axis=-1))
    return np.array([xs.mean(), ys.mean()]) - 15.5


@pytest.mark.parametrize("kind", vocab.KINDS_BY_CATEGORY["vehicle"])
def test_ships_point_where_their_direction_says(synth: Path, kind: str) -> None:
    # Engines glow at the back of every ship; the station's light sits on its front docking spire.
    sign = -1 if kind == "station" else 1
    for d, (dx, dy) in enumerate([(0, -1), (1, -1), (1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1)]):
        back = _glow_centre(synth, f"ship_{kind}_v0_{d}.png") * sign
        assert back @ np.array([dx, dy]) < -3, (kind, d, back)


def test_rotate_labels_is_clockwise() -> None:
    arrow = np.zeros((8, 8), dtype=np.uint8)
    arrow[0:4, 3:5] = 1  # a bar from the centre to the top
    right = rotate_labels(arrow, 2)
    assert right[3:5, 4:8].all() and not right[:, :3].any()
    diagonal = rotate_labels(arrow, 1)
    assert diagonal[:4, 4:].sum() > 0 and diagonal[4:, :4].sum() == 0  # up-right quadrant only


def test_kinds_differ_by_shape(synth: Path) -> None:
    masks = {k: _alpha(synth, f"ship_{k}_v0_0.png") > 0 for k in vocab.KINDS_BY_CATEGORY["vehicle"]}
    kinds = list(masks)
    for i, a in enumerate(kinds):
        for b in kinds[i + 1:]:
            iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
            assert iou < 0.85, (a, b, iou)


def test_deterministic_bytes(tmp_path: Path, synth: Path) -> None:
    again = tmp_path / "again"
    synth_dataset(again, seed=0, size=32, variants=2)
    assert _hashes(again) == _hashes(synth)
    other = tmp_path / "other"
    synth_dataset(other, seed=1, size=32, variants=1)
    assert _hashes(other)["images/ship_bomber_v0_0.png"] != _hashes(synth)["images/ship_bomber_v0_0.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


@pytest.mark.parametrize("size", [16, 48, 100])
def test_other_sizes(tmp_path: Path, size: int) -> None:
    assert validate_dataset(synth_dataset(tmp_path / "ds", size=size, variants=1).root).size == size


def test_refuses_bad_arguments_and_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError) as info:
        synth_dataset(tmp_path / "full", size=8, variants=0)
    assert len(info.value.problems) == 3
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert synth_dataset(tmp_path / "empty", size=16, variants=1).images == 6 * 8 + 13


def test_contact_sheet(synth: Path, tmp_path: Path) -> None:
    contact_sheet(synth, tmp_path / "sheet.png")
    sheet = Image.open(tmp_path / "sheet.png")
    rows = 12 + -(-26 // 8)  # one row per ship, then the single sprites 8 to a row
    assert sheet.size == (8 * 68 + 4, rows * 68 + 4)


def test_handheld_style_recolours_the_same_designs(tmp_path: Path, synth: Path) -> None:
    styled = tmp_path / "handheld"
    synth_dataset(styled, seed=0, size=32, variants=2, style="handheld")
    validate_dataset(styled)
    shades = {tuple(int(c) for c in rgb) for rgb in HANDHELD_SHADES}
    for name in ("ship_fighter_v0_3.png", "projectile_plasma_v1.png", "environment_planet_v0.png"):
        plain = np.asarray(Image.open(synth / "images" / name))
        green = np.asarray(Image.open(styled / "images" / name))
        assert (plain[..., 3] == green[..., 3]).all(), "a style changes colours, never shapes"
        used = {tuple(int(c) for c in px) for px in green[green[..., 3] > 0][:, :3]}
        assert used <= shades and len(used) >= 2, used
    meta = load_metadata(styled)
    assert meta.style == "pixel_art_handheld"
    caption = (styled / "captions" / "ship_fighter_v0_3.txt").read_text().strip()
    assert caption.endswith("transparent background, handheld style")
    assert "green colored" in caption  # the colour word follows the recoloured hull, not the design's
    with pytest.raises(DatasetError, match="synth style 'oil' is unknown; expected one of: 16bit, handheld, neon"):
        synth_dataset(tmp_path / "oil", size=32, variants=1, style="oil")


def test_cached_synth_set_per_style(tmp_path: Path) -> None:
    from catsith_sweep.config.schema import DataSection
    from catsith_sweep.data.source import dataset_root

    plain = dataset_root(DataSection(synth_variants=1, resolution=16), tmp_path)
    styled = dataset_root(DataSection(synth_variants=1, resolution=16, synth_style="handheld"), tmp_path)
    assert plain.name == "seed0-v1-16px"  # the builtin base's cached set keeps its folder
    assert styled.name == "seed0-v1-16px-handheld"
    assert load_metadata(styled).style == "pixel_art_handheld" and load_metadata(plain).style == "pixel_art_16bit"


def test_cached_synth_set_per_caption_colors(tmp_path: Path) -> None:
    from catsith_sweep.config.schema import DataSection
    from catsith_sweep.data.source import dataset_root

    guide = dataset_root(DataSection(synth_variants=1, resolution=16), tmp_path)
    measured = dataset_root(DataSection(synth_variants=1, resolution=16, caption_colors="measured"), tmp_path)
    neon = dataset_root(DataSection(synth_variants=1, resolution=16, synth_style="neon", caption_colors="measured"),
                        tmp_path)
    assert (guide.name, measured.name, neon.name) == (
        "seed0-v1-16px", "seed0-v1-16px-measured", "seed0-v1-16px-neon-measured")
    rock = "captions/environment_asteroid_v0.txt"
    assert "red colored" in (guide / rock).read_text()  # the guide's rule on a grey-brown rock
    assert "red colored" not in (measured / rock).read_text()
    assert (measured / "images").is_dir() and len(list((measured / "captions").iterdir())) == 6 * 8 + 13


def test_config_and_cli_know_every_style() -> None:
    import typing

    from catsith_sweep.config.schema import DataSection
    from catsith_sweep.data.synth_styles import STYLES

    annotation = DataSection.model_fields["synth_style"].annotation
    assert list(typing.get_args(annotation)) == list(STYLES)
