"""A plan's prediction kept for the sweep of the same config: `plan` and `run --dry-run` / `run --plan`
save it in `runs/<name>/plan-<config fingerprint>.json`; the sweep reads it (sweep/forecast.py) and its
parent run compares it with what happened (`predicted_*` vs `actual_*`)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from catsith_sweep.io import atomic_write_text


@dataclass
class Predicted:
    """A sweep's prediction, as the parent run records it."""

    wall_seconds: float
    steps: float
    trials: float
    trial_seconds: float
    """One trial of the whole budget."""
    source: str
    """`plan` (calibrated) or `first trial`."""
    wall_low: float | None = None
    wall_high: float | None = None
    """10th / 90th percentile wall seconds of the simulated sweeps (plan.schedule.Expectation.wall_range)."""


def plan_path(runs_dir: Path, fingerprint: str) -> Path:
    return runs_dir / f"plan-{fingerprint}.json"


def save_plan(runs_dir: Path, fingerprint: str, prediction: Any) -> Path:
    """Keep the planner's prediction (`plan.predict.Prediction`) for the sweep of this same config."""
    e = prediction.expectation
    low, high = prediction.wall_range_s
    predicted = Predicted(wall_seconds=prediction.wall_s, steps=e.steps, trials=e.trials,
                          trial_seconds=prediction.trial_full_s, source="plan", wall_low=low, wall_high=high)
    path = plan_path(runs_dir, fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({**asdict(predicted), "saved": time.time()}, indent=2))
    return path


def load_plan(runs_dir: Path, fingerprint: str) -> Predicted | None:
    path = plan_path(runs_dir, fingerprint)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return Predicted(**{k: data[k] for k in Predicted.__dataclass_fields__ if k in data})
