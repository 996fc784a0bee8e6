"""Measured caption colours: the HSV mapping, the pixel vote, and the guide's rule kept word for word."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catsith_sweep.cli import main
from catsith_sweep.data.captions import generate_caption, measured_color, write_captions
from catsith_sweep.data.synth import synth_dataset
from catsith_sweep.data.vocab import COLOR_NAMES, color_name
from catsith_sweep.errors import DatasetError

ASTEROID = {"id": "environment_asteroid", "kind": "asteroid", "category": "environment", "directions": 1,
            "base_color": [150, 124, 96], "files": ["environment_asteroid.png"]}


@pytest.mark.parametrize(("rgb", "name"), [
    ((150, 124, 96), "brown"),   # the demo's asteroids, "red colored" by the guide's rule
    ((120, 110, 104), "grey"),   # ditto
    ((196, 176, 120), "brown"), ((255, 150, 90), "orange"), ((242, 190, 160), "orange"),
    ((255, 128, 0), "orange"), ((192, 128, 64), "orange"), ((255, 0, 0), "red"), ((128, 0, 0), "red"),
    ((255, 192, 203), "pink"), ((210, 90, 170), "pink"), ((255, 255, 0), "yellow"), ((192, 192, 64), "yellow"),
    ((64, 192, 128), "green"), ((15, 56, 15), "green"), ((0, 255, 255), "cyan"), ((64, 128, 192), "blue"),
    ((128, 64, 192), "purple"), ((128, 0, 255), "purple"), ((128, 128, 128), "grey"),
    ((118, 124, 140), "grey"), ((240, 240, 245), "white"), ((30, 25, 20), "black"), ((0, 0, 0), "black"),
])
def test_color_name_mapping(rgb: tuple[int, int, int], name: str) -> None:
    assert color_name(rgb) == name and name in COLOR_NAMES


def test_every_hue_gets_a_name() -> None:
    from colorsys import hsv_to_rgb

    names = {color_name(tuple(round(255 * c) for c in hsv_to_rgb(h / 360, 1.0, 1.0))) for h in range(360)}
    assert names == {"red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink"}


def _sprite(body: tuple[int, int, int], *, outline: int = 2, side: int = 16) -> np.ndarray:
    """A square sprite: a body colour inside a black outline `outline` px wide, transparent corners."""
    pixels = np.zeros((side, side, 4), np.uint8)
    pixels[2:-2, 2:-2] = (0, 0, 0, 255)
    pixels[2 + outline:-2 - outline, 2 + outline:-2 - outline, :3] = body
    pixels[0, 0] = (255, 0, 0, 0)  # a transparent red pixel never counts
    return pixels


def test_measured_color_ignores_outlines_and_transparent_pixels() -> None:
    assert measured_color(_sprite((150, 124, 96))) == "brown"
    assert measured_color([_sprite((120, 110, 104)), _sprite((120, 110, 104))]) == "grey"
    # Mostly outline (body 4 px of 144 opaque): the sprite really is black.
    assert measured_color(_sprite((0, 200, 0), outline=5)) == "black"
    assert measured_color(np.zeros((4, 4, 4), np.uint8)) is None


def test_guide_rule_stays_word_for_word_and_measured_fixes_the_asteroid() -> None:
    guide = generate_caption(ASTEROID, 0)
    assert guide == ("pixel art game sprite, asteroid environment, red colored, transparent background, "
                     "16-bit retro style")
    assert generate_caption(ASTEROID, 0, colors="measured") == guide.replace("red colored", "brown colored")
    grey = generate_caption(ASTEROID, 0, colors="measured", pixels=_sprite((120, 110, 104)))
    assert "grey colored" in grey and "red colored" not in grey
    with pytest.raises(DatasetError, match="expected one of guide, measured"):
        generate_caption(ASTEROID, 0, colors="rainbow")  # type: ignore[arg-type]


def test_write_and_cli_measured_captions(tmp_path: Path) -> None:
    root = tmp_path / "set"
    synth_dataset(root, seed=0, size=16, variants=3)
    asteroid = root / "captions" / "environment_asteroid_v0.txt"
    assert "red colored" in asteroid.read_text()  # synth writes the guide's words
    assert main(["dataset", "caption", str(root), "--colors", "measured"]) == 0
    assert "grey colored" in asteroid.read_text()
    assert "brown colored" in (root / "captions" / "environment_asteroid_v2.txt").read_text()
    ship = [(root / "captions" / f"ship_cruiser_v0_{d}.txt").read_text() for d in range(8)]
    assert all("purple colored" in text for text in ship)  # one word for every view of a design
    write_captions(root, colors="guide")
    assert "red colored" in asteroid.read_text()
