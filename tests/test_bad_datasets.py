"""A corpus of hostile and malformed datasets and sprite sheets (issue 14), through the real CLI.

`dataset validate` and `dataset import-sheet` must exit 2 naming the file or key, print no traceback,
keep user text to a short line and write nothing, whatever the dataset holds: symlinked captions,
FIFOs, NUL bytes or 300-character names, metadata nested 100,000 deep, 5,000-digit numbers, NaN,
images whose header claims 12000x12000 px. The classic broken datasets of test_data_validate.py run
here too, through the CLI.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_validate import BROKEN, _edit_meta, _fighter, _png, make_dataset

from catsith_sweep.cli import main


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims width x height RGBA, with one tiny IDAT: decoding it would need
    width*height*4 bytes, so the size must be refused from the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def _set_files(root: Path, name: str) -> None:
    """List `name` as the bullet's only file (the real file stays, so it is reported extra too)."""
    _edit_meta(root, lambda m: m["entities"][1].update(files=[name]))


def _raw_meta(root: Path, text: str | bytes) -> None:
    target = root / "metadata.json"
    target.write_bytes(text if isinstance(text, bytes) else text.encode())


def _meta_with(root: Path, key: str, raw_value: str) -> None:
    """metadata.json with the bullet's `key` set to a raw JSON text (NaN, a huge number, ...)."""
    meta = json.loads((root / "metadata.json").read_text())
    meta["entities"][1][key] = "@@"
    _raw_meta(root, json.dumps(meta).replace('"@@"', raw_value))


def _caption_link_outside(root: Path) -> None:
    secret = root.parent / "secret.txt"
    secret.write_text("TOP-SECRET-TOKEN\n")
    cap = root / "captions" / "projectile_bullet.txt"
    cap.unlink()
    cap.symlink_to(secret)


def _replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _replace_with_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _symlink_loop(root: Path) -> None:
    img = root / "images" / "projectile_bullet.png"
    img.unlink()
    (root / "images" / "loop_a.png").symlink_to(root / "images" / "loop_b.png")
    (root / "images" / "loop_b.png").symlink_to(root / "images" / "loop_a.png")
    img.symlink_to(root / "images" / "loop_a.png")


def _sparse(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)


PNG_SIG = b"\x89PNG\r\n\x1a\n"
BULLET_PNG = "images/projectile_bullet.png"
BULLET_TXT = "captions/projectile_bullet.txt"

# (id, mutation, expected fragments, fragments that must not be printed)
DATASET_CASES: list[tuple[str, Callable[[Path], None], list[str], list[str]]] = [
    (f"classic-{name}", mutate, [expected], []) for name, mutate, expected in BROKEN
] + [
    ("caption-symlink-outside", _caption_link_outside,
     [f"{BULLET_TXT}: resolves to", "which leaves the dataset folder"], ["TOP-SECRET-TOKEN"]),
    ("caption-fifo", lambda r: _replace_with_fifo(r / BULLET_TXT),
     [f"{BULLET_TXT}: cannot read: is not a regular file"], []),
    ("caption-folder", lambda r: _replace_with_folder(r / BULLET_TXT), [f"{BULLET_TXT}: cannot read: is a folder"], []),
    ("caption-not-utf8", lambda r: (r / BULLET_TXT).write_bytes(b"\xff\xfe caption"),
     [f"{BULLET_TXT}: cannot read"], []),
    ("caption-huge", lambda r: (r / BULLET_TXT).write_text("x" * 70_000),
     [f"{BULLET_TXT}: cannot read: is 70,000 bytes"], []),
    ("image-fifo", lambda r: _replace_with_fifo(r / BULLET_PNG), [f"{BULLET_PNG}: is not a regular file"], []),
    ("image-folder", lambda r: _replace_with_folder(r / BULLET_PNG), [f"{BULLET_PNG}: is a folder"], []),
    ("image-symlink-loop", _symlink_loop, [f"{BULLET_PNG}: cannot be followed (Symlink loop"], []),
    ("image-12000px-header", lambda r: png_header_only(r / BULLET_PNG, 12000, 12000),
     [f"{BULLET_PNG}: 12000x12000 px; sprites are at most 1024x1024 (not decoded)"], []),
    ("image-2000px-header", lambda r: png_header_only(r / BULLET_PNG, 2000, 2000), ["2000x2000 px", "not decoded"], []),
    ("image-wide-header", lambda r: png_header_only(r / BULLET_PNG, 2**31 - 1, 1), ["2147483647x1 px"], []),
    ("image-no-ihdr", lambda r: (r / BULLET_PNG).write_bytes(PNG_SIG + b"\x00" * 4 + b"tEXt" + b"\x00" * 12),
     [f"{BULLET_PNG}: corrupt PNG (its first chunk is not IHDR)"], []),
    ("image-10-bytes", lambda r: (r / BULLET_PNG).write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00"),
     [f"{BULLET_PNG}: corrupt PNG (truncated"], []),
    ("image-palette", lambda r: _png(r / BULLET_PNG, mode="P"), [f"{BULLET_PNG}: mode P; expected RGBA"], []),
    ("name-nul", lambda r: _set_files(r, "bad\x00name.png"), ["'bad\\x00name.png': holds control characters"], []),
    ("name-newline", lambda r: _set_files(r, "bad\nname.png"), ["'bad\\nname.png': holds control characters"], []),
    ("name-tab", lambda r: _set_files(r, "bad\tname.png"), ["holds control characters"], []),
    ("name-300-chars", lambda r: _set_files(r, "n" * 296 + ".png"), ["over 255 bytes"], ["n" * 100]),
    ("name-300-char-folder", lambda r: _set_files(r, "d" * 300 + "/x.png"), ["over 255 bytes"], ["d" * 100]),
    ("name-5000-chars", lambda r: _set_files(r, "/".join(["p" * 200] * 25) + ".png"),
     ["files[0]: 'ppp", "over 1024 bytes"], ["p" * 100]),
    ("id-5000-chars", lambda r: _edit_meta(r, lambda m: [e.update(id="i" * 5000) for e in m["entities"]]),
     ["duplicate entity id 'iii"], ["i" * 100]),
    ("meta-nested-100000", lambda r: _raw_meta(r, '{"version": "1.0", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"),
     ["metadata.json: refused: nested deeper than 64 levels"], []),
    ("meta-nested-unclosed", lambda r: _raw_meta(r, "[" * 100_000), ["metadata.json: refused: nested deeper"], []),
    ("meta-nested-100", lambda r: _raw_meta(r, '{"a": ' + "{" * 99 + "}" * 99 + "}"), ["nested deeper than 64"], []),
    ("meta-5000-digits", lambda r: _meta_with(r, "directions", "9" * 5000),
     ["metadata.json: refused: a number with 5,000 digits"], ["9" * 100]),
    ("meta-nan", lambda r: _meta_with(r, "base_color", "[NaN, 0, 0]"),
     ["metadata.json: refused: entities[1].base_color[0]: not a finite number"], []),
    ("meta-infinity", lambda r: _meta_with(r, "directions", "Infinity"),
     ["entities[1].directions: not a finite number"], []),
    ("meta-1e999", lambda r: _meta_with(r, "directions", "1e999"), ["entities[1].directions: not a finite number"], []),
    ("meta-duplicate-key", lambda r: _raw_meta(r, '{"version": "1.0", "version": "2.0"}'),
     ["metadata.json: refused: duplicate key 'version'"], []),
    ("meta-directions-true", lambda r: _meta_with(r, "directions", "true"), ["entities[1].directions"], []),
    ("meta-color-bool", lambda r: _meta_with(r, "base_color", "[true, 0, 0]"), ["entities[1].base_color[0]"], []),
    ("meta-fifo", lambda r: _replace_with_fifo(r / "metadata.json"),
     ["metadata.json: cannot read: is not a regular file"], []),
    ("meta-folder", lambda r: _replace_with_folder(r / "metadata.json"),
     ["metadata.json: cannot read: is a folder"], []),
    ("meta-17mib", lambda r: _sparse(r / "metadata.json", 17 << 20),
     ["metadata.json: cannot read: is 17,825,792 bytes"], []),
    ("meta-not-utf8", lambda r: _raw_meta(r, b'{"version": "\xff"}'), ["metadata.json: refused"], []),
    ("meta-list", lambda r: _raw_meta(r, "[1, 2]"),
     ["metadata.json: (top level): Input should be a valid dictionary"], []),
    ("meta-entities-string", lambda r: _edit_meta(r, lambda m: m.update(entities="x" * 5000)),
     ["metadata.json: entities: Input should be a valid list"], ["x" * 100]),
    ("meta-markup", lambda r: _edit_meta(r, lambda m: _fighter(m).update(kind="[red]:x:[/red]")),
     ["unknown vehicle kind '[red]:x:[/red]'"], ["\u274c"]),
    ("extra-file-newline", lambda r: _png(r / "images" / "odd\nname.png"), ["images/odd\\nname.png: not listed"], []),
    ("images-folder-symlink-out", lambda r: (os.rename(r / "images", r.parent / "elsewhere"),
                                             (r / "images").symlink_to(r.parent / "elsewhere")),
     ["which leaves the dataset folder"], []),
]


def _tree(root: Path) -> dict[str, float]:
    return {str(p): p.lstat().st_mtime for p in root.rglob("*")}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refusing an argument
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def _check_refusal(code: int, err: str, expect: list[str], absent: list[str]) -> None:
    assert code == 2, err
    assert "Traceback" not in err and "RecursionError" not in err and "MemoryError" not in err
    flat = " ".join(err.split())
    for fragment in expect:
        assert " ".join(fragment.split()) in flat, f"{fragment!r} not in:\n{err[:3000]}"
    for fragment in absent:
        assert fragment not in err, f"{fragment!r} must not be printed:\n{err[:3000]}"
    assert max(len(line) for line in err.splitlines()) < 600, "user text must be cut to a short line"


@pytest.mark.timeout(60)  # a FIFO read must fail the test, not hang it
@pytest.mark.parametrize(("mutate", "expect", "absent"), [c[1:] for c in DATASET_CASES],
                         ids=[c[0] for c in DATASET_CASES])
def test_bad_dataset_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: Callable[[Path], None],
                                expect: list[str], absent: list[str]) -> None:
    root = make_dataset(tmp_path / "ds")
    mutate(root)
    before = _tree(tmp_path)
    code, err = _run(["dataset", "validate", str(root)], capsys)
    _check_refusal(code, err, expect, absent)
    assert _tree(tmp_path) == before, "validate must write nothing"


def _sheet(path: Path, size: tuple[int, int] = (64, 32)) -> Path:
    pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    pixels[:] = (255, 0, 255)
    pixels[8:24, 8:24] = (40, 200, 90)
    Image.fromarray(pixels, "RGB").save(path)
    return path


SHEET_ARGS = ["--category", "vehicle", "--kind", "fighter", "--grid", "2x1", "--color-key", "auto", "--size", "32"]


def _with(args: list[str], flag: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(flag) + 1] = value
    return out


# (id, prepare(tmp) -> (sheet, out folder), extra args, expected fragments)
SHEET_CASES: list[tuple[str, Callable[[Path], tuple[Path, Path]], list[str], list[str]]] = [
    ("size-60000", lambda t: (_sheet(t / "s.png"), t / "out"), _with(SHEET_ARGS, "--size", "60000"),
     ["size 60000: expected 8 to 1024 px"]),
    ("size-4", lambda t: (_sheet(t / "s.png"), t / "out"), _with(SHEET_ARGS, "--size", "4"),
     ["size 4: expected 8 to 1024"]),
    ("size-negative", lambda t: (_sheet(t / "s.png"), t / "out"), _with(SHEET_ARGS, "--size", "-64"), ["size -64"]),
    ("sheet-fifo", lambda t: (os.mkfifo(t / "s.png"), t / "s.png", t / "out")[1:], SHEET_ARGS,
     ["s.png: is not a regular file"]),
    ("sheet-folder", lambda t: ((t / "s.png").mkdir(), t / "s.png", t / "out")[1:], SHEET_ARGS, ["s.png: is a folder"]),
    ("sheet-missing", lambda t: (t / "nope.png", t / "out"), SHEET_ARGS, ["nope.png: missing sprite sheet"]),
    ("sheet-20000px-header", lambda t: (png_header_only(t / "s.png", 20000, 20000), t / "s.png", t / "out")[1:],
     SHEET_ARGS, ["is over 33,554,432 pixels", "not decoded"]),
    ("sheet-text", lambda t: ((t / "s.png").write_text("hello"), t / "s.png", t / "out")[1:], SHEET_ARGS,
     ["s.png: cannot read as an image"]),
    ("sheet-truncated", lambda t: ((t / "s.png").write_bytes(_sheet(t / "x.png").read_bytes()[:50]), t / "s.png",
                                   t / "out")[1:], SHEET_ARGS, ["s.png: cannot read as an image"]),
    ("frame-5000px", lambda t: (_sheet(t / "s.png", (5000, 4)), t / "out"),
     ["--category", "vehicle", "--kind", "fighter", "--grid", "1x1"], ["frames of 5000x4 px; a frame is at most 4096"]),
    ("id-nul", lambda t: (_sheet(t / "s.png"), t / "out"), [*SHEET_ARGS, "--id", "a\x00b"], ["entity id 'a\\x00b'"]),
    ("id-long", lambda t: (_sheet(t / "s.png"), t / "out"), [*SHEET_ARGS, "--id", "a" * 300], ["entity id 'aaa"]),
    ("category-markup", lambda t: (_sheet(t / "s.png"), t / "out"), _with(SHEET_ARGS, "--category", "[bold]:x:"),
     ["category '[bold]:x:'"]),
    ("grid-0x0", lambda t: (_sheet(t / "s.png"), t / "out"), _with(SHEET_ARGS, "--grid", "0x0"), ["grid 0x0"]),
    ("frames-0", lambda t: (_sheet(t / "s.png"), t / "out"), [*SHEET_ARGS, "--frames", "0"], ["frames 0"]),
    ("color-key-bad", lambda t: (_sheet(t / "s.png"), t / "out"), _with(SHEET_ARGS, "--color-key", "blue"),
     ["expected auto, R,G,B or #RRGGBB"]),
    ("out-is-file", lambda t: (_sheet(t / "s.png"), ((t / "out").write_text("x"), t / "out")[1]), SHEET_ARGS,
     ["out: exists, is not empty and has no metadata.json"]),
    ("out-broken-dataset", lambda t: (_sheet(t / "s.png"), (make_dataset(t / "out"),
                                                           _raw_meta(t / "out", "[" * 100_000), t / "out")[2]),
     SHEET_ARGS, ["metadata.json: refused: nested deeper"]),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("prepare", "args", "expect"), [c[1:] for c in SHEET_CASES], ids=[c[0] for c in SHEET_CASES])
def test_bad_sheet_import_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     prepare: Callable[[Path], tuple[Path, Path]], args: list[str],
                                     expect: list[str]) -> None:
    sheet, out = prepare(tmp_path)
    before = _tree(tmp_path)
    code, err = _run(["dataset", "import-sheet", str(sheet), str(out), *args], capsys)
    _check_refusal(code, err, expect, [])
    assert _tree(tmp_path) == before, "a refused import must write nothing"


def test_corpus_sizes() -> None:
    assert len(DATASET_CASES) + len(SHEET_CASES) >= 60
