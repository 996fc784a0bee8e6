"""A corpus of hostile and malformed CatSith registry packages (issue 14), through `registry verify`.

Each case must exit 2, name the field or file, print no traceback, keep user text to a short line and
write nothing; verifying a registry folder reports a verdict per package, so one broken package never
hides the others.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_registry import _write

from catsith_sweep.cli import main
from catsith_sweep.registry import Category, blake3_ints, package_hash

WEIGHTS = "weights.bin"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("pristine")
    return _write(tmp / "loras", tmp).path


def _doc(pkg: Path) -> dict[str, Any]:
    return json.loads((pkg / "manifest.json").read_text())


def _save(pkg: Path, doc: dict[str, Any]) -> None:
    (pkg / "manifest.json").write_text(json.dumps(doc))


def _edit(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def mutate(pkg: Path) -> None:
        doc = _doc(pkg)
        change(doc)
        _save(pkg, doc)
    return mutate


def _raw(text: str | bytes) -> Callable[[Path], None]:
    return lambda pkg: (pkg / "manifest.json").write_bytes(text if isinstance(text, bytes) else text.encode())


def _raw_field(path: tuple[str, ...], raw_value: str) -> Callable[[Path], None]:
    """Set a field to raw JSON text (NaN, a 5,000-digit number, ...) that json.dumps would not write."""
    def mutate(pkg: Path) -> None:
        doc = _doc(pkg)
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = "@@RAW@@"
        (pkg / "manifest.json").write_text(json.dumps(doc).replace('"@@RAW@@"', raw_value))
    return mutate


def _rehashed(change: Callable[[bytearray], bytes | bytearray]) -> Callable[[Path], None]:
    """Change weights.bin and fix every hash and size, so only the content itself is wrong."""
    def mutate(pkg: Path) -> None:
        data = bytes(change(bytearray((pkg / WEIGHTS).read_bytes())))
        (pkg / WEIGHTS).write_bytes(data)
        doc = _doc(pkg)
        doc["weights"].update(size_bytes=len(data), hash=blake3_ints(data))
        doc["hash"] = package_hash(doc["name"], Category(doc["category"]), data)
        _save(pkg, doc)
    return mutate


def _first_float_offset(data: bytearray) -> int:
    name_len = struct.unpack_from("<I", data, 16)[0]
    return 16 + 4 + name_len + 8  # header, name length, name, in_dim, out_dim


def _poke_float(value: float) -> Callable[[bytearray], bytearray]:
    def change(data: bytearray) -> bytearray:
        struct.pack_into("<f", data, _first_float_offset(data), value)
        return data
    return change


def _set_u32(offset: int, value: int) -> Callable[[bytearray], bytearray]:
    def change(data: bytearray) -> bytearray:
        struct.pack_into("<I", data, offset, value)
        return data
    return change


def _replace(name: str, how: str) -> Callable[[Path], None]:
    def mutate(pkg: Path) -> None:
        target = pkg / name
        target.unlink()
        if how == "fifo":
            os.mkfifo(target)
        elif how == "folder":
            target.mkdir()
        elif how == "loop":
            target.symlink_to(pkg / name)
        elif how == "sparse-2gib":
            with open(target, "wb") as handle:
                handle.truncate(2 << 30)
    return mutate


def _manifest_link_to_sibling(pkg: Path) -> None:
    sibling = pkg.parent / "other-package"
    shutil.copytree(pkg, sibling)
    (pkg / "manifest.json").unlink()
    (pkg / "manifest.json").symlink_to(sibling / "manifest.json")


def _manifest_link_outside(pkg: Path) -> None:
    secret = pkg.parent / "secret.json"
    secret.write_text('{"token": "TOP-SECRET-TOKEN"}')
    (pkg / "manifest.json").unlink()
    (pkg / "manifest.json").symlink_to(secret)


def _nested(depth: int) -> Callable[[Path], None]:
    def mutate(pkg: Path) -> None:
        text = json.dumps(_doc(pkg))
        (pkg / "manifest.json").write_text(text[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}")
    return mutate


def _weights_path(value: str) -> Callable[[Path], None]:
    return _edit(lambda d: d["weights"].update(path=value))


def _preview_path(value: str) -> Callable[[Path], None]:
    return _edit(lambda d: d["previews"][0].update(path=value))


def _only_weights(pkg: Path) -> None:
    (pkg / "manifest.json").unlink()


def _empty_folder(pkg: Path) -> None:
    for child in pkg.iterdir():
        child.unlink()


# (id, mutation of a copy of a valid package, expected fragments, fragments that must not be printed)
CASES: list[tuple[str, Callable[[Path], None], list[str], list[str]]] = [
    ("no-manifest", _only_weights, ["pixel-ships: not a package (manifest.json is missing)"], []),
    ("empty-folder", _empty_folder, ["not a package (manifest.json is missing) and no sub-folder holds one"], []),
    ("alpha-nan", _raw_field(("weights", "alpha"), "NaN"), ["weights.alpha: not a finite number"], []),
    ("alpha-infinity", _raw_field(("weights", "alpha"), "Infinity"), ["weights.alpha: not a finite number"], []),
    ("alpha-minus-infinity", _raw_field(("weights", "alpha"), "-Infinity"), ["weights.alpha: not a finite"], []),
    ("alpha-1e999", _raw_field(("weights", "alpha"), "1e999"), ["weights.alpha: not a finite number"], []),
    ("alpha-negative", _edit(lambda d: d["weights"].update(alpha=-4.0)),
     ["weights.alpha is -4.0; expected a positive"], []),
    ("alpha-zero", _edit(lambda d: d["weights"].update(alpha=0.0)), ["weights.alpha is 0.0"], []),
    ("alpha-string", _edit(lambda d: d["weights"].update(alpha="8")), ["field weights.alpha"], []),
    ("alpha-true", _edit(lambda d: d["weights"].update(alpha=True)), ["field weights.alpha"], []),
    ("weights-nan", _rehashed(_poke_float(float("nan"))), ["weights.bin does not parse", "non-finite value(s)"], []),
    ("weights-inf", _rehashed(_poke_float(float("inf"))), ["non-finite value(s) (NaN/inf)"], []),
    ("weights-truncated", _rehashed(lambda d: d[:-3]), ["weights.bin does not parse: truncated"], []),
    ("weights-trailing", _rehashed(lambda d: d + b"\x00"), ["1 trailing bytes"], []),
    ("weights-bad-magic", _rehashed(lambda d: b"NOPE" + d[4:]), ["bad magic"], []),
    ("weights-version-2", _rehashed(_set_u32(4, 2)), ["unsupported weights.bin version 2"], []),
    ("weights-rank-0", _rehashed(_set_u32(8, 0)), ["rank is 0"], []),
    ("weights-4g-layers", _rehashed(_set_u32(12, 2**32 - 1)), ["truncated"], []),
    ("weights-huge-dims", _rehashed(lambda d: (_set_u32(20 + struct.unpack_from("<I", d, 16)[0], 2**31))(d)),
     ["truncated"], []),
    ("weights-name-not-utf8", _rehashed(lambda d: d[:20] + b"\xff" + d[21:]), ["name is not valid UTF-8"], []),
    ("weights-tampered", lambda p: (p / WEIGHTS).write_bytes(b"\x00" + (p / WEIGHTS).read_bytes()[1:]),
     ["blake3 of weights.bin", "differs from weights.hash"], []),
    ("weights-fifo", _replace(WEIGHTS, "fifo"), ["weights file weights.bin is not a regular file"], []),
    ("weights-folder", _replace(WEIGHTS, "folder"), ["weights file weights.bin is a folder"], []),
    ("weights-symlink-loop", _replace(WEIGHTS, "loop"), ["weights.path 'weights.bin' cannot be resolved"], []),
    ("weights-over-1gib", _replace(WEIGHTS, "sparse-2gib"), ["is 2,147,483,648 bytes", "at most 1,073,741,824"], []),
    ("weights-missing", lambda p: (p / WEIGHTS).unlink(), ["weights file weights.bin is missing"], []),
    ("weights-path-nul", _weights_path("weights\x00.bin"), ["weights.path 'weights\\x00.bin' holds control"], []),
    ("weights-path-newline", _weights_path("a\nb.bin"), ["weights.path 'a\\nb.bin' holds control characters"], []),
    ("weights-path-5000", _weights_path("w" * 5000), ["weights.path 'www", "over 1024 bytes"], ["w" * 100]),
    ("weights-path-300-component", _weights_path("w" * 300), ["weights.path 'www", "a component over 255 bytes"],
     ["w" * 100]),
    ("weights-path-dotdot", _weights_path("../other/weights.bin"), ["contains '..' (path traversal)"], []),
    ("weights-path-absolute", _weights_path("/etc/passwd"), ["weights.path '/etc/passwd' is absolute"], ["root:"]),
    ("weights-path-drive", _weights_path("C:\\weights.bin"), ["is absolute"], []),
    ("weights-path-empty", _weights_path(""), ["weights.path is empty"], []),
    ("preview-path-nul", _preview_path("pre\x00view.png"), ["previews: path 'pre\\x00view.png' holds control"], []),
    ("preview-path-absolute", _preview_path("/etc/shadow"), ["previews: path '/etc/shadow' is absolute"], []),
    ("preview-path-dotdot", _preview_path("../../x.png"), ["previews: path '../../x.png' contains '..'"], []),
    ("manifest-link-to-sibling", _manifest_link_to_sibling,
     ["manifest.json resolves outside the package (symlink to", "other-package/"], []),
    ("manifest-link-outside", _manifest_link_outside, ["manifest.json resolves outside the package"],
     ["TOP-SECRET-TOKEN"]),
    ("manifest-link-loop", _replace("manifest.json", "loop"), ["manifest.json cannot be resolved"], []),
    ("manifest-fifo", _replace("manifest.json", "fifo"), ["manifest.json cannot be read: is not a regular file"], []),
    ("manifest-folder", _replace("manifest.json", "folder"), ["manifest.json cannot be read: is a folder"], []),
    ("manifest-over-1mib", _raw(" " * (2 << 20) + "{}"), ["manifest.json cannot be read: is 2,097,154 bytes"], []),
    ("manifest-nested-100000", _nested(100_000), ["manifest.json refused: nested deeper than 64 levels"], []),
    ("manifest-nested-unclosed", _raw("{" + '"a":[' * 50_000), ["manifest.json refused: nested deeper"], []),
    ("manifest-nested-100", _nested(100), ["nested deeper than 64"], []),
    ("manifest-5000-digits", _raw_field(("created_at",), "9" * 5000),
     ["manifest.json refused: a number with 5,000 digits"], ["9" * 100]),
    ("created-at-over-u64", _edit(lambda d: d.update(created_at=2**64)), ["field created_at"], []),
    ("manifest-duplicate-key", _raw('{"version": 1, "version": 2}'),
     ["manifest.json refused: duplicate key 'version'"], []),
    ("manifest-not-utf8", _raw(b'{"name": "\xff"}'), ["manifest.json refused"], []),
    ("manifest-bom", _raw(b"\xef\xbb\xbf{}"), ["manifest.json"], []),
    ("manifest-list", _raw("[1, 2, 3]"), ["manifest.json: field (root)"], []),
    ("manifest-empty", _raw(""), ["manifest.json is not valid JSON"], []),
    ("manifest-truncated", lambda p: (p / "manifest.json").write_bytes((p / "manifest.json").read_bytes()[:40]),
     ["manifest.json is not valid JSON"], []),
    ("version-2", _edit(lambda d: d.update(version=2)), ["version is 2, CatSith reads version 1"], []),
    ("rank-true", _edit(lambda d: d["weights"].update(rank=True)), ["field weights.rank"], []),
    ("rank-zero", _edit(lambda d: d["weights"].update(rank=0)), ["weights.rank is 0"], []),
    ("size-string", _edit(lambda d: d["weights"].update(size_bytes="12")), ["field weights.size_bytes"], []),
    ("size-zero", _edit(lambda d: d["weights"].update(size_bytes=0)), ["weights.size_bytes is 0"], []),
    ("hash-hex", _edit(lambda d: d.update(hash=bytes(d["hash"]).hex())), ["field hash"], []),
    ("hash-short", _edit(lambda d: d.update(hash=d["hash"][:31])), ["field hash"], []),
    ("hash-wrong", _edit(lambda d: d.update(hash=[0] * 32)), ["package hash differs"], []),
    ("category-unknown", _edit(lambda d: d.update(category="Weapons")), ["field category"], []),
    ("name-empty", _edit(lambda d: d.update(name="")), ["name is empty"], []),
    ("tags-int", _edit(lambda d: d.update(tags=[1])), ["field tags.0"], []),
    ("compat-not-list", _edit(lambda d: d.update(compatible_with="diffusion_v1")), ["field compatible_with"], []),
    ("markup-in-name", _edit(lambda d: d.update(name="[red]:x:[/red]", version=3)), ["version is 3"], ["\u274c"]),
]


def _tree(root: Path) -> dict[str, float]:
    return {str(p): p.lstat().st_mtime for p in root.rglob("*")}


def _verify(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["registry", "verify", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _check(code: int, text: str, expect: list[str], absent: list[str]) -> None:
    assert code == 2, text
    assert "Traceback" not in text and "RecursionError" not in text and "failed:" not in text
    flat = " ".join(text.split())
    for fragment in expect:
        assert " ".join(fragment.split()) in flat, f"{fragment!r} not in:\n{text[:3000]}"
    for fragment in absent:
        assert fragment not in text, f"{fragment!r} must not be printed:\n{text[:3000]}"
    assert max(len(line) for line in text.splitlines()) < 600, "user text must be cut to a short line"


@pytest.mark.timeout(60)  # a FIFO read must fail the test, not hang it
@pytest.mark.parametrize(("mutate", "expect", "absent"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_package_is_refused(tmp_path: Path, pristine: Path, capsys: pytest.CaptureFixture[str],
                                mutate: Callable[[Path], None], expect: list[str], absent: list[str]) -> None:
    pkg = tmp_path / "registry" / "pixel-ships"
    shutil.copytree(pristine, pkg)
    mutate(pkg)
    before = _tree(tmp_path)
    code, text = _verify(pkg, capsys)
    _check(code, text, expect, absent)
    assert _tree(tmp_path) == before, "verify must write nothing"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("mutate", "expect", "absent"), [c[1:] for c in CASES if c[0] not in ("no-manifest",
                         "empty-folder", "manifest-link-to-sibling")], ids=[c[0] for c in CASES if c[0] not in (
                         "no-manifest", "empty-folder", "manifest-link-to-sibling")])
def test_one_bad_package_does_not_hide_the_others(tmp_path: Path, pristine: Path,
                                                  capsys: pytest.CaptureFixture[str], mutate: Callable[[Path], None],
                                                  expect: list[str], absent: list[str]) -> None:
    registry = tmp_path / "registry"
    for slug in ("a-good", "b-bad", "c-good"):
        shutil.copytree(pristine, registry / slug)
    mutate(registry / "b-bad")
    code, text = _verify(registry, capsys)
    _check(code, text, expect, absent)
    assert f"ok {registry / 'a-good'}" in text and f"ok {registry / 'c-good'}" in text, text
    assert f"{registry / 'b-bad'}" in text and "b-bad: " in text


def test_not_a_package_beside_packages_is_a_warning(tmp_path: Path, pristine: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    registry = tmp_path / "registry"
    shutil.copytree(pristine, registry / "good")
    (registry / "notes").mkdir()
    code, text = _verify(registry, capsys)
    assert code == 0 and f"ok {registry / 'good'}" in text and "1 package(s) verified" in text


def test_corpus_size() -> None:
    assert len(CASES) >= 60
