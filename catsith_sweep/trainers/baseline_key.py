"""Where a sweep's baseline evaluation is cached and under which key (sweep/baseline.py evaluates and
stores it): here, below the planner, which says whether a sweep will pay for its baseline or reuse it."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from catsith_sweep.config import Experiment
from catsith_sweep.layout import cache_root

BASELINES_DIR = "baselines"
"""Under the cache: one folder per baseline key (`baseline.json` and the sample grid)."""
BASELINE_FILE = "baseline.json"
CACHE_FORMAT = 1
"""Bumped when what is cached changes meaning: older entries are then never read."""


@functools.cache
def git_commit() -> str:
    """The code's git commit (part of the baseline key), `unknown` outside a checkout; asked of git once
    per process (the driver, the baseline and the planner all need it)."""
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def base_fingerprint(experiment: Experiment) -> str:
    """What identifies the base a trainer starts from: a local folder by its files' names, sizes and
    modification times (not their bytes: weights can be large); a hub id by id and revision; "" for a
    trainer that builds its model from scratch."""
    from catsith_sweep.models.base_source import base_location
    from catsith_sweep.trainers import NEEDS_BASE

    if experiment.trainer not in NEEDS_BASE:
        return ""
    location = base_location(experiment.model.base, experiment.model.cache_dir)
    if isinstance(location, str):
        return f"hub:{location}@{experiment.model.revision}"
    root = Path(location)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    facts = [(p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()


def cache_key(experiment: Experiment, *, dataset_fingerprint: str, code_version: str) -> str:
    """The key of a baseline evaluation: everything its numbers depend on. The base (`base_fingerprint`),
    the dataset's content and `data` section (its held-out split), the `eval` section, the trainer and
    its own section, the seed and device, and the code (`code_version`: package version and git commit;
    uncommitted edits to metric code are not seen, so clear `<cache>/baselines` after making some).
    The search space, trial budget and tracking are not part of it."""
    from catsith_sweep import __version__

    exp = experiment.model_dump(mode="json")
    facts = {
        "format": CACHE_FORMAT, "code": [__version__, code_version], "trainer": experiment.trainer,
        "trainer_section": exp.get(experiment.trainer), "base": base_fingerprint(experiment),
        "model": {k: v for k, v in exp["model"].items() if k != "cache_dir"},
        "dataset": dataset_fingerprint, "data": exp["data"], "eval": exp["eval"],
        "train": {k: exp["train"].get(k) for k in ("seed", "device", "mixed_precision")},
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cache_folder(experiment: Experiment, key: str, cache_dir: Path | None = None) -> Path:
    """`<cache>/baselines/<key>`; the cache is `cache_dir`, else the experiment's (`model.cache_dir`)."""
    return (cache_dir or cache_root(experiment.model.cache_dir)) / BASELINES_DIR / key


def cached_facts(folder: Path) -> dict[str, Any] | None:
    """The contents of the baseline cached in `folder` (its images as paths), or None when there is none
    usable (missing, unreadable, another format, an image gone)."""
    try:
        facts = json.loads((folder / BASELINE_FILE).read_text())
        images = {name: folder / file for name, file in facts["images"].items()}
        if facts.get("format") != CACHE_FORMAT or not all(p.is_file() for p in images.values()):
            return None
        return {**facts, "images": images}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def baseline_cached(experiment: Experiment, dataset_dir: Path) -> bool:
    """Whether a sweep of `experiment` on the dataset in `dataset_dir` finds its baseline cached (and so
    pays no evaluation for it)."""
    from catsith_sweep.data.fingerprint import fingerprint

    key = cache_key(experiment, dataset_fingerprint=fingerprint(dataset_dir), code_version=git_commit())
    return cached_facts(cache_folder(experiment, key)) is not None
