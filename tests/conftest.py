"""Shared test set-up: quiet, offline, single-threaded (CI has 2 cores and runs tests in parallel)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Session fixtures with real tiny models (a catsith-tiny base built by the full trainer, its cache).
from fixtures_models import catsith_cache, tiny_base, use_catsith_cache  # noqa: E402, F401
