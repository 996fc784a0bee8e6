"""The `dataset` subcommands through the real CLI: exit codes, messages, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from catsith_sweep.cli import main


def test_synth_then_validate_and_caption(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "set"
    assert main(["dataset", "synth", str(out), "--seed", "3", "--variants", "1",
                 "--contact-sheet", str(tmp_path / "sheet.png")]) == 0
    assert (tmp_path / "sheet.png").is_file()
    assert main(["dataset", "validate", str(out)]) == 0
    assert "ok" in capsys.readouterr().out
    caption = out / "captions" / "ship_fighter_v0_2.txt"
    caption.unlink()
    assert main(["dataset", "validate", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ship_fighter_v0_2" in err and "Traceback" not in err
    assert main(["dataset", "caption", str(out)]) == 0
    assert caption.read_text().strip() == (
        "pixel art game sprite, fighter vehicle, facing right, green colored, transparent background, "
        "16-bit retro style")


def test_validate_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "set"
    assert main(["dataset", "synth", str(out), "--variants", "1"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    meta["entities"][0]["files"][0] = "../escape.png"
    meta["entities"][1]["base_color"] = [300, 0, 0]
    (out / "metadata.json").write_text(json.dumps(meta))
    Image.new("RGB", (64, 64)).save(out / "images" / "stray.png")
    capsys.readouterr()
    assert main(["dataset", "validate", str(out)]) == 2
    err = capsys.readouterr().err
    for fragment in ("../escape.png", "base_color", "stray.png"):
        assert fragment in err, err


def test_import_sheet_cli(tmp_path: Path) -> None:
    sheet = Image.new("RGB", (64, 32), (255, 0, 255))
    for i in range(2):
        for x in range(4 + i, 28):
            sheet.putpixel((i * 32 + x, 10), (10, 200, 10))
    sheet.save(tmp_path / "sheet.png")
    out = tmp_path / "set"
    assert main(["dataset", "import-sheet", str(tmp_path / "sheet.png"), str(out), "--category", "projectile",
                 "--kind", "laser", "--grid", "2x1", "--color-key", "auto"]) == 0
    assert main(["dataset", "validate", str(out)]) == 0
    image = Image.open(next((out / "images").glob("*.png")))
    assert image.mode == "RGBA" and image.getpixel((0, 0))[3] == 0


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["dataset", "import-sheet", "x.png", str(tmp_path), "--category", "vehicle", "--kind", "fighter",
              "--grid", "two"])
    assert info.value.code == 2
