"""The fingerprint of an experiment's resolved config and search space: a sweep resumes only a sweep with
the same one, and a plan saved by `plan` / `run --dry-run` is used by the sweep of the same one."""

from __future__ import annotations

import hashlib
import json

from catsith_sweep.config.loader import LoadedExperiment, dump_resolved


def config_fingerprint(loaded: LoadedExperiment) -> str:
    space = {k: v.model_dump() for k, v in sorted(loaded.space.items())}
    text = dump_resolved(loaded.experiment) + json.dumps(space, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
