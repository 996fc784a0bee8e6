"""A corpus of hostile and malformed experiment files, search-space files and overrides (issue 14).

Each case goes through the real CLI (`validate` and `run --dry-run`, via main()) and must: exit 2,
name the file (or the command line) and the key or line, print no traceback, keep user text to one
short line, and write nothing. Bombs, deep nesting and huge numbers must be refused by a bound, not
by running out of memory or stack.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from catsith_sweep.cli import main

HEAD = "name: x\ntrainer: lora\n"


def _laughs(levels: int = 9, width: int = 9) -> str:
    """The classic billion-laughs document: each level is `width` aliases of the one before."""
    lines = ['a0: &a0 ["lol"]']
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "\n".join(lines) + "\n"


def _flow_bomb() -> str:
    """The same bomb as one flow value, for an override."""
    inner = '&a0 ["lol"]'
    for level in range(1, 8):
        inner = f"[{inner}, &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]]"
    return inner


def _block_nesting(depth: int) -> str:
    return "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + f"{'  ' * depth}v: 1\n"


@dataclass
class Case:
    """One bad input: the experiment text, extra files beside it, overrides, and what the error says."""

    id: str
    text: str | bytes = HEAD
    expect: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    files: dict[str, str | bytes] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)  # must NOT be in the output
    setup: Callable[[Path], None] | None = None  # builds the experiment path itself (FIFO, folder)


SPACE = "search:\n  space_file: mine\n"
MINE = "search_spaces/mine.yaml"

CASES: list[Case] = [
    # --- alias bombs: bounded expansion, refused with the line of the first alias
    Case("billion-laughs", HEAD + _laughs(), ["exp.yaml:4: refused", "expands to", "aliases", "first alias on line"]),
    Case("laughs-in-mapping", HEAD + "lora:\n  target_modules: &x [a, a, a, a, a, a, a, a, a, a]\n"
         + "".join(f"b{i}: &b{i} [" + ", ".join([f"*{'x' if i == 0 else f'b{i - 1}'}"] * 10) + "]\n"
                   for i in range(6)), ["exp.yaml", "expands to", "an alias bomb"]),
    Case("laughs-in-space-file", HEAD + SPACE, ["search_spaces/mine.yaml", "expands to"],
         files={MINE: _laughs()}),
    Case("laughs-in-override", HEAD, ["command line `train.seeds=", "expands to"],
         overrides=[f"train.seeds={_flow_bomb()}"]),
    # --- nesting: a bound, not RecursionError
    Case("flow-seq-3000", HEAD + "data: " + "[" * 3000 + "]" * 3000 + "\n", ["exp.yaml:3: refused", "nested deeper"]),
    Case("flow-map-3000", HEAD + "data: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", ["exp.yaml:3", "nested deeper"]),
    Case("block-nesting-200", HEAD + _block_nesting(200), ["exp.yaml", "nested deeper than 64 levels"]),
    Case("unclosed-deep-flow", HEAD + "data: " + "[" * 100_000 + "\n", ["exp.yaml", "nested deeper"]),
    Case("deep-space-file", HEAD + SPACE, ["search_spaces/mine.yaml", "nested deeper"],
         files={MINE: "space: " + "[" * 3000 + "]" * 3000 + "\n"}),
    Case("deep-override", HEAD, ["command line", "nested deeper"], overrides=["data.path=" + "[" * 500 + "]" * 500]),
    # --- numbers: no ValueError, no overflow, no infinity
    Case("int-5000-digits", HEAD + "data:\n  synth_seed: " + "9" * 5000 + "\n",
         ["exp.yaml:4: refused", "an integer with 5,000 digits"]),
    Case("int-5000-digits-space", HEAD + SPACE, ["search_spaces/mine.yaml:2", "5,000 digits"],
         files={MINE: "space:\n  lora.rank: {type: int, low: 1, high: " + "1" * 5000 + "}\n"}),
    Case("int-over-64-bits", HEAD + "data:\n  synth_seed: 18446744073709551616\n",
         ["exp.yaml:4", "does not fit in 64 bits"]),
    Case("hex-huge", HEAD + "data:\n  synth_seed: 0x" + "f" * 60 + "\n", ["exp.yaml:4", "digits"]),
    Case("lr-inf", HEAD + "train:\n  learning_rate: .inf\n", ["exp.yaml:4: refused", "'.inf' is not a finite number"]),
    Case("lr-minus-inf", HEAD + "train:\n  learning_rate: -.inf\n", ["exp.yaml:4", "not a finite number"]),
    Case("lr-nan", HEAD + "train:\n  learning_rate: .nan\n", ["exp.yaml:4", "'.nan' is not a finite number"]),
    Case("lr-1e999", HEAD + "train:\n  learning_rate: 1.0e+999\n", ["exp.yaml:4", "not a finite number"]),
    Case("inf-override", HEAD, ["command line `train.learning_rate=.inf`", "not a finite number"],
         overrides=["train.learning_rate=.inf"]),
    Case("inf-space-high", HEAD + "search:\n  space:\n    lora.alpha: {type: float, low: 1.0, high: .inf}\n",
         ["exp.yaml:5", "not a finite number"]),
    Case("nan-categorical", HEAD + "search:\n  space:\n    lora.alpha: {type: categorical, values: [1.0, .NaN]}\n",
         ["exp.yaml:5", "not a finite number"]),
    Case("val-fraction-nan", HEAD + "data:\n  val_fraction: .NAN\n", ["exp.yaml:4", "not a finite number"]),
    Case("cpu-inf", HEAD + "resources:\n  cpu: .Inf\n", ["exp.yaml:4", "not a finite number"]),
    # --- duplicate keys: both lines named
    Case("dup-rank", HEAD + "lora:\n  rank: 4\n  rank: 8\n",
         ["exp.yaml:5: refused", "duplicate key 'rank' (lines 4 and 5)"]),
    Case("dup-section", HEAD + "train:\n  max_steps: 5\ntrain:\n  max_steps: 9\n",
         ["exp.yaml:5", "duplicate key 'train' (lines 3 and 5)"]),
    Case("dup-flow", HEAD + "lora: {rank: 4, alpha: 2, rank: 8}\n", ["exp.yaml:3", "duplicate key 'rank'"]),
    Case("dup-top-name", HEAD + "name: y\n", ["exp.yaml:3", "duplicate key 'name' (lines 1 and 3)"]),
    Case("dup-space-key", HEAD + "search:\n  space:\n    lora.rank: {type: int, low: 2, high: 8}\n"
         "    lora.rank: {type: int, low: 4, high: 16}\n", ["exp.yaml:6", "duplicate key 'lora.rank' (lines 5 and 6)"]),
    Case("dup-in-space-file", HEAD + SPACE, ["search_spaces/mine.yaml:3", "duplicate key 'space' (lines 1 and 3)"],
         files={MINE: "space: {}\ntrainer: lora\nspace: {}\n"}),
    Case("dup-in-override", HEAD, ["command line", "duplicate key 'rank'"], overrides=["lora={rank: 4, rank: 8}"]),
    # --- bools are not numbers, numbers are not bools
    Case("rank-true", HEAD + "lora:\n  rank: true\n", ["exp.yaml:4 lora.rank: expected a number, but got true"]),
    Case("lr-true", HEAD + "train:\n  learning_rate: yes\n", ["exp.yaml:4 train.learning_rate: expected a number"]),
    Case("batch-false", HEAD + "train:\n  batch_size: false\n", ["exp.yaml:4 train.batch_size: expected a number"]),
    Case("enabled-1", HEAD + "data:\n  augment:\n    enabled: 1\n",
         ["exp.yaml:5 data.augment.enabled: expected true or false, but got 1"]),
    Case("cache-0", HEAD + "data:\n  cache_latents: 0\n", ["exp.yaml:4 data.cache_latents: expected true or false"]),
    Case("noise-std-bool", HEAD + "data:\n  augment:\n    noise_std: [true, 0.01]\n",
         ["exp.yaml:5 data.augment.noise_std: expected a number"]),
    Case("seeds-bool", HEAD + "eval:\n  seeds: [1, true]\n", ["exp.yaml:4 eval.seeds", "expected a number"]),
    Case("space-low-true", HEAD + "search:\n  space:\n    lora.rank: {type: int, low: true, high: 8}\n",
         ["exp.yaml:5 search.space.lora.rank", "`low`: expected a number, but got true"]),
    Case("space-log-1", HEAD + "search:\n  space:\n    lora.rank: {type: int, low: 1, high: 8, log: 1}\n",
         ["exp.yaml:5 search.space.lora.rank", "`log`: expected true or false"]),
    Case("override-rank-true", HEAD, ["command line `lora.rank=true` lora.rank: expected a number"],
         overrides=["lora.rank=true"]),
    # --- the file itself: not a regular file, unreadable, too big, not UTF-8
    Case("fifo", setup=lambda p: os.mkfifo(p), expect=["exp.yaml: is not a regular file (a FIFO"]),
    Case("folder", setup=lambda p: p.mkdir(), expect=["exp.yaml: is a folder; expected a YAML file"]),
    Case("missing-file", setup=lambda p: None, expect=["exp.yaml: file not found"]),
    Case("binary", b"\xff\xfe\x00\x01garbage\x80", ["exp.yaml: cannot read: not UTF-8 text"]),
    Case("too-big", HEAD + "# " + "x" * (1 << 20) + "\n", ["exp.yaml: is 1,048,", "at most 1,048,576 bytes"]),
    Case("empty-file", "", ["exp.yaml:1: an experiment file must be a mapping", "NoneType"]),
    Case("nul-byte", HEAD + "description: a\x00b\n", ["exp.yaml", "invalid YAML"]),
    Case("control-char", HEAD + "description: a\x07b\n", ["exp.yaml", "invalid YAML"]),
    Case("space-file-fifo", HEAD + SPACE, ["search_spaces/mine.yaml: is not a regular file"],
         files={MINE: "FIFO"}),
    Case("space-file-binary", HEAD + SPACE, ["search_spaces/mine.yaml: cannot read: not UTF-8"],
         files={MINE: b"\x89PNG\r\n\x1a\n\xff\xff"}),
    Case("space-file-list", HEAD + SPACE, ["search_spaces/mine.yaml:1: a search-space file must be a mapping"],
         files={MINE: "- a\n- b\n"}),
    # --- syntax and tags
    Case("tab-indent", HEAD + "train:\n\tmax_steps: 5\n", ["exp.yaml:4: invalid YAML"]),
    Case("unclosed-quote", HEAD + "description: 'oops\n", ["exp.yaml", "invalid YAML"]),
    Case("unknown-alias", HEAD + "lora: *nope\n", ["exp.yaml:3: invalid YAML", "undefined alias"]),
    Case("python-tag", HEAD + "x: !!python/object/apply:os.system ['echo pwned']\n", ["exp.yaml:3: invalid YAML"],
         absent=["pwned\n"]),
    Case("custom-tag", HEAD + "lora: !secret rank\n", ["exp.yaml:3: invalid YAML"]),
    Case("complex-key", HEAD + "? [a, b]\n: 1\n", ["exp.yaml", "invalid YAML", "unhashable"]),
    Case("two-documents", HEAD + "---\nname: y\n", ["exp.yaml:3: invalid YAML", "single document"]),
    # --- overrides: blamed on the command line, not on a YAML line
    Case("override-new-nested", HEAD, ["command line `nonexistent.key=1` nonexistent: unknown key"],
         overrides=["nonexistent.key=1"], absent=["exp.yaml:1 nonexistent"]),
    Case("override-new-deep", HEAD + "lora:\n  rank: 4\n", ["command line `lora.nonexistent.deep=1` lora.nonexistent"],
         overrides=["lora.nonexistent.deep=1"], absent=["exp.yaml:3 lora.nonexistent"]),
    Case("override-new-top", HEAD, ["command line `bogus=1` bogus: unknown key"], overrides=["bogus=1"]),
    Case("override-no-key", HEAD, ["command line `=5`: an override must look like key.path=value"], overrides=["=5"]),
    # --- user text is quoted, cut to a line, and never turned into markup or emoji
    Case("space-file-etc-passwd", HEAD + "search:\n  space_file: /etc/passwd\n",
         ["/etc/passwd:1: a search-space file must be a mapping"], absent=["root:x:0", "/bin/"]),
    Case("emoji-shortcode", HEAD + "description: ok\ndata:\n  synth_style: ':x: :smile:'\n",
         ["exp.yaml:5 data.synth_style", "':x: :smile:'"], absent=["\u274c", "\U0001f604"]),
    Case("markup-in-value", HEAD + "data:\n  synth_style: '[red]boom[/red]'\n", ["'[red]boom[/red]'"]),
    Case("long-value", HEAD + "data:\n  synth_style: '" + "z" * 5000 + "'\n", ["exp.yaml:4 data.synth_style", "zzz…"],
         absent=["z" * 200]),
    Case("newline-value", HEAD + 'data:\n  synth_style: "a\\nb\\nc"\n', ["exp.yaml:4 data.synth_style", "'a\\nb\\nc'"]),
    Case("long-key", HEAD + "train:\n  " + "k" * 1000 + ": 1\n", ["exp.yaml:4 train.kkk", "…: unknown key"],
         absent=["k" * 200]),
    Case("long-space-file-name", HEAD + "search:\n  space_file: '" + "n" * 4000 + "'\n",
         ["exp.yaml:4 search.space_file: no search-space file", "nnn…"], absent=["n" * 200]),
    Case("long-override", HEAD, ["command line `train.batch_size=", "…"], overrides=["train.batch_size=" + "q" * 3000],
         absent=["q" * 200]),
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _prepare(tmp_path: Path, case: Case) -> Path:
    exp = tmp_path / "experiments" / "exp.yaml"
    exp.parent.mkdir(parents=True, exist_ok=True)
    for rel, content in case.files.items():
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if content == "FIFO":
            os.mkfifo(target)
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    if case.setup is not None:
        case.setup(exp)
    elif isinstance(case.text, bytes):
        exp.write_bytes(case.text)
    else:
        exp.write_text(case.text)
    return exp


@pytest.mark.timeout(60)  # a FIFO that blocks must fail the test, not hang the suite
@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_config_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str], case: Case, command: str) -> None:
    exp = _prepare(tmp_path, case)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CATSITH_CACHE", str(tmp_path / "cache"))
    before = _tree(tmp_path)
    argv = [command, str(exp), *case.overrides] + (["--dry-run"] if command == "run" else [])
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err and "RecursionError" not in err and "MemoryError" not in err
    flat = " ".join(err.split())
    for fragment in case.expect:
        assert " ".join(fragment.split()) in flat, f"{fragment!r} not in:\n{err[:3000]}"
    for fragment in case.absent:
        assert fragment not in err, f"{fragment!r} should not be printed:\n{err[:3000]}"
    assert "command line" in err or str(exp.parent.parent) in err
    assert max(len(line) for line in err.splitlines()) < 600, "user text must be cut to a short line"
    assert _tree(tmp_path) == before, "a refused config must write nothing"


def test_corpus_size() -> None:
    assert len(CASES) >= 60


def test_good_configs_still_load(tmp_path: Path) -> None:
    """The bounds leave ordinary configs alone: anchors reused a few times, merge keys, floats."""
    from catsith_sweep.config import load_experiment

    text = HEAD + (
        "train: &t {max_steps: 10, learning_rate: 1.0e-4}\n"
        "search:\n  space:\n    lora.rank: {type: categorical, values: [4, 8]}\n"
        "    train.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n"
        "    lora.target_modules: {type: categorical, values: [&m [to_q, to_v], *m]}\n"
    )
    exp = tmp_path / "exp.yaml"
    exp.write_text(text)
    loaded = load_experiment(exp, ["lora.alpha=8", "data.augment.enabled=true"])
    assert loaded.experiment.train.max_steps == 10 and loaded.experiment.data.augment.enabled is True
    merged = tmp_path / "merged.yaml"
    merged.write_text(HEAD + "lora:\n  <<: {rank: 8, alpha: 16}\n  alpha: 4\n")
    lora = load_experiment(merged).experiment.lora
    assert lora is not None and (lora.rank, lora.alpha) == (8, 4)
