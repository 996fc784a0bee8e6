"""The sweep's baseline: its untuned starting point, evaluated at several eval seeds, and the noise floor
that spread gives; cached per setup, evaluated beside the first trials, and the ties it implies.

The baseline is what the trials start from, evaluated with no training (for LoRA: the untuned base,
since a fresh adapter is a no-op), through the trainer's own `evaluate`, so it is scored exactly as the
trials are. `eval.noise_seeds` evaluations, each at its own eval seed (`with_eval_seed`): the first is
the trials' own seed, so `baseline_<metric>` compares with them like for like; the sample standard
deviation over all of them is `noise_floor_<metric>` (`metrics.noise`), logged beside it on the parent
run. Trials within `TIE_FLOORS` noise floors of the best are ties on the leaderboard (`tie_marks`).

Evaluations are cached in `<cache>/baselines/<key>/` (`cache_key`: base, dataset fingerprint, held-out
split, eval config, trainer, code version), so a second sweep on the same setup pays nothing for them;
a new sweep starts its baseline in a thread (`BaselineJob`) that runs while Ray starts and the first
trials train, and the driver collects it once the trials are done.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catsith_sweep.config import Experiment
from catsith_sweep.io import atomic_write_json
from catsith_sweep.metrics.noise import TIE_FLOORS, noise_floors, within_noise
from catsith_sweep.tracking import TrialRow, rank
from catsith_sweep.trainers.baseline_key import (  # noqa: F401  # the cache's key and folder live below the planner
    BASELINE_FILE,
    BASELINES_DIR,
    CACHE_FORMAT,
    base_fingerprint,
    cache_folder,
    cache_key,
    cached_facts,
)

EVAL_SEED_STRIDE = 1009
"""Eval seed k evaluates with `train.seed + k * EVAL_SEED_STRIDE` (a prime: the metric samples of one
seed, drawn at `train.seed + 0, 16, 32, ...`, never reuse another's)."""
BEST_MARK, TIE_MARK = "best", "= tie"


@dataclass
class Baseline:
    """The starting point's evaluation: metrics at the trials' seed, and their noise floors."""

    metrics: dict[str, float]
    """At eval seed 0 (the trials' own): what `baseline_<metric>` logs."""
    noise_floors: dict[str, float] = field(default_factory=dict)
    """`noise_floor_<metric>`: the sample std over `per_seed` (empty with one seed)."""
    per_seed: list[dict[str, float]] = field(default_factory=list)
    images: dict[str, Path] = field(default_factory=dict)
    key: str = ""
    cached: bool = False
    """True when read from the cache rather than evaluated now."""
    seconds: float = 0.0
    """How long the evaluation took when it was made."""

    def describe(self) -> str:
        seeds = f"{len(self.per_seed)} eval seed{'s' * (len(self.per_seed) != 1)}"
        if self.cached:
            return f"baseline reused from the cache ({seeds}, key {self.key[:12]}; it took {self.seconds:.1f} s)"
        return f"baseline evaluated ({seeds}, {self.seconds:.1f} s; cached as {self.key[:12]})"


def with_eval_seed(experiment: Experiment, index: int) -> Experiment:
    """`experiment` evaluated at eval seed `index`: the seed its metric samples are drawn from moves by
    `index * EVAL_SEED_STRIDE` (index 0 is the experiment itself)."""
    if index == 0:
        return experiment
    train = experiment.train.model_copy(update={"seed": experiment.train.seed + index * EVAL_SEED_STRIDE})
    return experiment.model_copy(update={"train": train})


def load_cached(folder: Path) -> Baseline | None:
    """The baseline cached in `folder`, or None when there is none (or it is unreadable)."""
    facts = cached_facts(folder)
    if facts is None:
        return None
    try:
        return Baseline(metrics=facts["metrics"], noise_floors=facts["noise_floors"], per_seed=facts["per_seed"],
                        images=facts["images"], key=folder.name, cached=True, seconds=float(facts["seconds"]))
    except (KeyError, TypeError, ValueError):
        return None


def store(folder: Path, baseline: Baseline) -> Baseline:
    """Write `baseline` into the cache folder `folder` (whole or not at all) and return it as cached
    there (its images now in the cache, not in the sweep's work folder)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        names = {}
        for name, path in baseline.images.items():
            names[name] = f"{name}{path.suffix}"
            shutil.copyfile(path, staging / names[name])
        atomic_write_json(staging / BASELINE_FILE, {
            "format": CACHE_FORMAT, "metrics": baseline.metrics, "noise_floors": baseline.noise_floors,
            "per_seed": baseline.per_seed, "images": names, "seconds": baseline.seconds,
            "created": time.strftime("%Y-%m-%d %H:%M:%S")})
        with contextlib.suppress(OSError):  # another sweep cached the same key meanwhile: keep theirs
            staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    kept = load_cached(folder)
    if kept is None:
        return baseline
    kept.cached, kept.seconds = False, baseline.seconds  # made now, though read back from the cache
    return kept


def evaluate_at_seeds(experiment: Experiment, workdir: Path, seeds: int) -> Baseline:
    """Evaluate the starting point with no training at `seeds` eval seeds, through the trainer's own
    `evaluate`. The trainer is set up once: trainers read their config from `self.exp` when they
    evaluate, so the later seeds swap it for the re-seeded config (one trainer per seed otherwise)."""
    from catsith_sweep.trainers import make_trainer

    started = time.perf_counter()
    trainer: Any = make_trainer(experiment, workdir)
    trainer.setup()
    first = trainer.evaluate(workdir / "seed_0")
    per_seed = [dict(first.metrics)]
    for index in range(1, seeds):
        seeded = with_eval_seed(experiment, index)
        if hasattr(trainer, "exp"):
            trainer.exp = seeded
        else:
            trainer = make_trainer(seeded, workdir)
            trainer.setup()
        per_seed.append(dict(trainer.evaluate(workdir / f"seed_{index}").metrics))
    floors = noise_floors(per_seed) if seeds >= 2 else {}
    return Baseline(metrics=per_seed[0], noise_floors=floors, per_seed=per_seed, images=dict(first.images),
                    seconds=time.perf_counter() - started)


def baseline_for(experiment: Experiment, workdir: Path, *, dataset_fingerprint: str, code_version: str,
                 use_cache: bool = True, cache_dir: Path | None = None) -> Baseline:
    """The baseline of `experiment`: from the cache (`cache_folder`) when this setup was evaluated
    before, else evaluated now (in `workdir`) and cached."""
    key = cache_key(experiment, dataset_fingerprint=dataset_fingerprint, code_version=code_version)
    folder = cache_folder(experiment, key, cache_dir)
    if use_cache and (cached := load_cached(folder)) is not None:
        return cached
    made = evaluate_at_seeds(experiment, workdir, experiment.eval.noise_seeds)
    made.key = key
    return store(folder, made) if use_cache else made


class BaselineJob:
    """`baseline_for` in a thread, started while Ray starts; `wait` collects it. An error is
    reported, not raised: the baseline is a reference, and the trials (which load the same base and
    data) fail on their own when the setup is broken."""

    def __init__(self, compute: Callable[[], Baseline], *, log: Callable[[str], None] = print) -> None:
        self._compute, self._log = compute, log
        self.result: Baseline | None = None
        self.error: str | None = None
        # Not a daemon: an interrupted driver's exit waits for it rather than ending the process while it is
        # inside torch (Python 3.11 then aborts the process), and the resumed sweep finds it cached.
        self._thread = threading.Thread(target=self._run, name="catsith-baseline", daemon=False)

    def start(self) -> BaselineJob:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self._compute()
            self._log(self.result.describe())
        except Exception as exc:  # noqa: BLE001 - reported in wait(); see the class docstring
            self.error = f"{type(exc).__name__}: {exc}"

    def wait(self, timeout: float | None = None) -> Baseline | None:
        """The baseline once done (None when it failed, saying why, or is not done within `timeout`)."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            return None
        if self.error is not None:
            self._log(f"the baseline evaluation failed ({self.error}): the leaderboard has no baseline or "
                      "noise floor for this sweep")
        return self.result


def start_job(experiment: Experiment, workdir: Path, *, dataset_fingerprint: str, code_version: str,
              log: Callable[[str], None] = print) -> BaselineJob:
    """Start the sweep's baseline (`baseline_for`) in a thread and say so; collect it with `wait`."""
    seeds = experiment.eval.noise_seeds
    log(f"baseline: the starting point (no training) at {seeds} eval seed{'s' * (seeds != 1)}, "
        "beside the first trials (cached per setup)")
    return BaselineJob(lambda: baseline_for(experiment, workdir, dataset_fingerprint=dataset_fingerprint,
                                            code_version=code_version), log=log).start()


def log_to_parent(uri: str, run_id: str, baseline: Baseline) -> None:
    """`baseline_<metric>`, `noise_floor_<metric>`, the sample grid and where they came from, on the
    sweep's parent run."""
    from catsith_sweep.tracking import sweep_runs

    sweep_runs.log_baseline(uri, run_id, baseline.metrics, baseline.images, noise_floors=baseline.noise_floors,
                            source=baseline.describe())


def tie_marks(rows: list[TrialRow], metric: str, mode: str, floor: float | None) -> dict[str, str]:
    """Trial id -> `best` for the best trial, `= tie` for every other ranked trial whose `metric` is
    within `TIE_FLOORS` noise floors of the best's (a difference the eval seed alone could make);
    no entry for the others. No ties without a noise floor (None, or 0 from a one-seed baseline)."""
    ranked = rank(rows, metric, mode)
    if not ranked:
        return {}
    best = ranked[0].value(metric)
    marks = {ranked[0].trial: BEST_MARK}
    if floor is None or floor <= 0 or best is None:
        return marks
    for row in ranked[1:]:
        value = row.value(metric)
        if value is not None and within_noise(value, best, floor):
            marks[row.trial] = TIE_MARK
    return marks


def floor_of(metrics: Mapping[str, float], metric: str) -> float | None:
    """The noise floor of `metric` among a parent run's metrics (`noise_floor_<metric>`), if any."""
    from catsith_sweep.metrics.noise import NOISE_FLOOR_PREFIX

    value = metrics.get(NOISE_FLOOR_PREFIX + metric)
    return float(value) if value is not None else None


def verdict(best: float, before: float, floor: float | None, mode: str) -> str:
    """`best` against the baseline `before` in words, with the noise floor when there is one."""
    gain = (before - best) if mode == "min" else (best - before)
    relative = f" ({100 * gain / abs(before):+.1f}%)" if before else ""
    text = f"best {best:.4g} vs {before:.4g} before training{relative}"
    if floor is None:
        return text
    within = within_noise(best, before, floor)
    return (f"{text}; noise floor {floor:.3g} (x{TIE_FLOORS:g} = {TIE_FLOORS * floor:.3g}): "
            + ("within noise of the baseline" if within else "beyond noise"))


def ties_note(metric: str, floor: float | None) -> str:
    """The line under a leaderboard that says what its `tie` column means here."""
    if floor is None:
        return f"No noise floor for {metric} (eval.noise_seeds < 2, or no baseline): no ties are marked."
    return (f"tie: within {TIE_FLOORS:g} noise floors ({TIE_FLOORS * floor:.3g}) of the best {metric}; the "
            f"noise floor {floor:.3g} is the spread of the untuned baseline over eval seeds.")
