"""The package's layers (pyproject `[tool.importlinter]`), checked by import-linter on every test run.

Layers, lowest first: errors/io/layout, config, data, models, metrics/export, trainers,
tracking/registry, sweep/promote, cli. A layer imports only layers below it, siblings never import each
other, and sibling packages and modules form no cycle. Function-level (lazy) imports count: a lazy
import that points upward still ties the lower layer to the higher one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the package and pyproject.toml under `root`."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_no_upward_import_and_no_cycle() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(("module", "bad_import", "reported"), [
    # A lazy upward import: loading a base must never be able to start a base build.
    ("models/sprite_vae.py", "from catsith_sweep.trainers import base_build",
     "catsith_sweep.models.sprite_vae -> catsith_sweep.trainers.base_build"),
    # A cycle inside one layer: dataset reads the vocabulary, so the vocabulary may not read datasets.
    ("data/vocab.py", "from catsith_sweep.data import dataset", "No cycles are allowed in catsith_sweep.data"),
])
def test_the_check_catches_a_lazy_import_that_breaks_the_rules(tmp_path: Path, module: str, bad_import: str,
                                                              reported: str) -> None:
    shutil.copytree(ROOT / "catsith_sweep", tmp_path / "catsith_sweep",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "catsith_sweep" / module, "a", encoding="utf-8") as handle:
        handle.write(f"\n\ndef _added_by_the_test() -> None:\n    {bad_import}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert reported in result.stdout
