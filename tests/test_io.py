"""File plumbing: atomic files, staged folders, locks between processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from catsith_sweep.io import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    file_lock,
    publish_dir,
    replace_dir,
    staged_dir,
    staging_dir,
)


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    atomic_write_json(target, {"b": 1, "a": [2]}, sort_keys=True)
    assert target.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    assert json.loads(target.read_text()) == {"a": [2], "b": 1}
    assert target.stat().st_mode & 0o777 == 0o644  # shared outputs, not mkstemp's 0600


def test_replace_dir_swaps_the_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    with staged_dir(target) as staging:
        (staging / "a").write_text("1")
    with staged_dir(target) as staging:
        (staging / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]  # the old folder is gone, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # no staging or old folder left
    with pytest.raises(RuntimeError), staged_dir(target) as staging:
        (staging / "c").write_text("3")
        raise RuntimeError("failed half-way")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
    staging = staging_dir(target)
    (staging / "d").write_text("4")
    replace_dir(staging, target)
    assert sorted(p.name for p in target.iterdir()) == ["d"] and os.stat(target).st_mode & 0o777 == 0o755


def test_publish_dir_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "package"
    target.mkdir()  # an empty folder may be taken over
    with staged_dir(target, replace=False) as staging:
        (staging / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    staging = staging_dir(target)
    (staging / "b").write_text("2")
    with pytest.raises(OSError):
        publish_dir(staging, target)
    assert sorted(p.name for p in target.iterdir()) == ["a"]


def test_file_lock_excludes_another_process(tmp_path: Path) -> None:
    lock = tmp_path / "sub" / ".entry.lock"
    probe = ("import sys; from filelock import FileLock, Timeout\n"
             "try:\n    FileLock(sys.argv[1], timeout=0.2).acquire()\nexcept Timeout:\n    sys.exit(3)\n")
    with file_lock(lock):
        held = subprocess.run([sys.executable, "-c", probe, str(lock)], timeout=60)
    free = subprocess.run([sys.executable, "-c", probe, str(lock)], timeout=60)
    assert (held.returncode, free.returncode) == (3, 0)
