"""Styles of the synthetic set: `neon` recolours the 16bit designs only, deterministically, into a
measurably different palette; the caption colour rule reaches synth sets, imported sheets and the CLI."""

from __future__ import annotations

import hashlib
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catsith_sweep.data import vocab
from catsith_sweep.data.captions import COLOR_RULES, ColorRule
from catsith_sweep.data.metadata import load_metadata
from catsith_sweep.data.synth import synth_dataset
from catsith_sweep.data.synth_styles import NEON_OUTLINE, STYLES, hsv_to_rgb, rgb_to_hsv
from catsith_sweep.errors import DatasetError

SHIP = "ship_fighter_v0_3.png"


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("styles")
    out = {}
    for style in ("16bit", "neon"):
        out[style] = root / style
        synth_dataset(out[style], seed=0, size=32, variants=1, style=style)
    return out


def _pixels(root: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(root / "images" / name).convert("RGBA"))


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "images").iterdir())


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_hsv_round_trip_and_known_values() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (200, 3))
    assert np.abs(hsv_to_rgb(*rgb_to_hsv(rgb)) - rgb).max() < 1e-6
    hue, saturation, value = rgb_to_hsv(np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]]))
    assert hue[:3].tolist() == [0, 120, 240] and saturation[3] == 0 and value[3] == pytest.approx(128 / 255)


def test_neon_is_deterministic(sets: dict[str, Path], tmp_path: Path) -> None:
    synth_dataset(tmp_path / "again", seed=0, size=32, variants=1, style="neon")
    assert _hashes(tmp_path / "again") == _hashes(sets["neon"])


def test_neon_recolours_the_same_designs(sets: dict[str, Path]) -> None:
    plain, neon = sets["16bit"], sets["neon"]
    assert _names(plain) == _names(neon)
    plain_meta, neon_meta = load_metadata(plain), load_metadata(neon)
    assert [(e.id, e.category, e.kind, e.directions, e.files) for e in plain_meta.entities] == \
        [(e.id, e.category, e.kind, e.directions, e.files) for e in neon_meta.entities]
    for name in _names(plain):
        a, b = _pixels(plain, name), _pixels(neon, name)
        assert np.array_equal(a[..., 3], b[..., 3]), f"{name}: a style changes colours, never shapes"
        # A recolouring: every 16bit colour of the sprite becomes exactly one neon colour.
        opaque = a[..., 3] > 0
        pairs = {(tuple(x), tuple(y)) for x, y in zip(a[opaque][:, :3].tolist(), b[opaque][:, :3].tolist(),
                                                     strict=True)}
        assert len({x for x, _ in pairs}) == len(pairs), name


def test_neon_palette_differs_from_16bit(sets: dict[str, Path]) -> None:
    plain, neon = sets["16bit"], sets["neon"]
    a = np.concatenate([_pixels(plain, n).reshape(-1, 4) for n in _names(plain)]).astype(float)
    b = np.concatenate([_pixels(neon, n).reshape(-1, 4) for n in _names(neon)]).astype(float)
    opaque = a[:, 3] > 0
    distance = np.linalg.norm(a[opaque, :3] - b[opaque, :3], axis=1)
    # Measured: mean 145 (of 441, black to white), 77% of pixels move more than 40 (the rest: outlines,
    # dark in both styles). A per-variant hull shade (0.9-1.1) moves a colour by at most ~30.
    assert distance.mean() > 100, distance.mean()
    assert (distance > 40).mean() > 0.7
    # Every vehicle hull (the base colour) changes its hue by far more than a variant's shade.
    for entity_plain, entity_neon in zip(load_metadata(plain).entities, load_metadata(neon).entities, strict=True):
        if entity_plain.category == "vehicle" and entity_plain.kind != "station":
            hues = rgb_to_hsv(np.array([entity_plain.base_color, entity_neon.base_color]))[0]
            turn = abs(float(hues[0] - hues[1])) % 360
            assert min(turn, 360 - turn) > 90, (entity_plain.id, entity_plain.base_color, entity_neon.base_color)
    # One outline colour: the 16bit outlines are tinted per sprite, the neon ones are all NEON_OUTLINE.
    ship = _pixels(neon, SHIP)
    edge = ship[..., 3] > 0
    edge &= ~np.pad(edge, 1)[2:, 1:-1] | ~np.pad(edge, 1)[:-2, 1:-1]  # opaque with empty above or below
    assert (ship[edge][:, :3] == NEON_OUTLINE).all(axis=1).mean() > 0.9


def test_neon_captions_and_metadata(sets: dict[str, Path]) -> None:
    neon = sets["neon"]
    assert load_metadata(neon).style == "pixel_art_neon"
    caption = (neon / "captions" / "ship_fighter_v0_3.txt").read_text().strip()
    assert caption.startswith("pixel art game sprite, fighter vehicle, facing down-right, ")
    assert caption.endswith("transparent background, neon style, dark outline")
    assert "16-bit" not in caption
    plain_caption = (sets["16bit"] / "captions" / "ship_fighter_v0_3.txt").read_text()
    assert "green colored" in plain_caption and "red colored" in caption  # green hull -> magenta


def test_config_knows_every_style_and_colour_rule() -> None:
    from catsith_sweep.config.schema import DataSection

    assert list(typing.get_args(DataSection.model_fields["synth_style"].annotation)) == list(STYLES)
    assert typing.get_args(DataSection.model_fields["caption_colors"].annotation) == COLOR_RULES
    assert DataSection().caption_colors == "guide"


def test_caption_colors_change_synth_captions(tmp_path: Path) -> None:
    guide, measured = tmp_path / "guide", tmp_path / "measured"
    synth_dataset(guide, seed=0, size=16, variants=1)
    synth_dataset(measured, seed=0, size=16, variants=1, caption_colors="measured")
    assert _names(guide) == _names(measured)
    assert all((guide / "images" / n).read_bytes() == (measured / "images" / n).read_bytes() for n in _names(guide))
    changed = [p.name for p in (guide / "captions").iterdir()
               if p.read_text() != (measured / "captions" / p.name).read_text()]
    assert "environment_asteroid_v0.txt" in changed and "ship_fighter_v0_0.txt" not in changed
    assert "station vehicle, facing up, grey colored" in (measured / "captions" / "ship_station_v0_0.txt").read_text()
    with pytest.raises(DatasetError, match="caption colours 'loud': expected one of guide, measured"):
        synth_dataset(tmp_path / "bad", size=16, variants=1, caption_colors="loud")  # type: ignore[arg-type]
    assert not (tmp_path / "bad").exists()


def test_caption_colors_reach_imported_sheets_and_the_cli(tmp_path: Path) -> None:
    from catsith_sweep.cli import main
    from catsith_sweep.data.sheets import import_sheet

    rocks = np.zeros((32, 64, 4), dtype=np.uint8)
    rocks[4:28, 4:28] = (150, 124, 96, 255)  # grey-brown: "red" by the guide's rule, "brown" measured
    rocks[4:28, 36:60] = (150, 124, 96, 255)
    Image.fromarray(rocks, "RGBA").save(tmp_path / "rocks.png")
    rules: tuple[tuple[ColorRule, str], ...] = (("guide", "red colored"), ("measured", "brown colored"))
    for rule, word in rules:
        import_sheet(tmp_path / "rocks.png", tmp_path / rule, grid=(2, 1), category="environment",
                     kind="asteroid", size=32, caption_colors=rule)
        assert word in (tmp_path / rule / "captions" / "environment_asteroid_rocks_0.txt").read_text()
    assert main(["dataset", "import-sheet", str(tmp_path / "rocks.png"), str(tmp_path / "cli"), "--grid", "2x1",
                 "--category", "environment", "--kind", "asteroid", "--size", "32", "--colors", "measured"]) == 0
    assert "brown colored" in (tmp_path / "cli" / "captions" / "environment_asteroid_rocks_1.txt").read_text()
    assert main(["dataset", "synth", str(tmp_path / "synth"), "--size", "16", "--variants", "1",
                 "--style", "neon", "--colors", "measured"]) == 0
    assert load_metadata(tmp_path / "synth").style == "pixel_art_neon"
    station = (tmp_path / "synth" / "captions" / "ship_station_v0_0.txt").read_text()
    assert "purple colored" in station and "neon style" in station  # violet-tinted grey, named as seen
    assert vocab.color_name((149, 119, 170)) == "purple"


def test_style_experiment_targets_held_out_neon(tmp_path: Path) -> None:
    from catsith_sweep.config import load_experiment
    from catsith_sweep.data.dataset import SpriteDataset
    from catsith_sweep.data.source import dataset_root
    from catsith_sweep.data.split import split_by_entity

    root = Path(__file__).resolve().parents[1]
    loaded = load_experiment(root / "experiments" / "lora_style.yaml", [f"model.cache_dir={tmp_path}"])
    exp = loaded.experiment
    data = exp.data
    assert (data.synth_style, data.synth_seed, data.path) == ("neon", 1, None)
    # The held-out side is large enough to score the sweep's metric samples on.
    dataset = SpriteDataset(dataset_root(data, tmp_path))
    split = split_by_entity(dataset, heldout_fraction=data.val_fraction, seed=0,
                            min_heldout_images=exp.eval.num_metric_samples)
    assert len(split.heldout) >= exp.eval.num_metric_samples and split.train_entities > split.heldout_entities
