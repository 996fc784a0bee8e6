"""The trainer contract, and the plain trial loop that drives any trainer without Ray or MLflow.

A trainer is a class that satisfies `Trainer`; it knows nothing of sweeps. `run_trial` is the whole
body of a sweep trial: the Ray adapter in `catsith_sweep.sweep` only passes it a reporter that forwards
to `ray.tune.report` and MLflow, and a notebook can pass `print`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from catsith_sweep.config.loader import dump_resolved
from catsith_sweep.config.schema import Experiment
from catsith_sweep.io import atomic_write_text, staged_dir
from catsith_sweep.trainers.surface import TrainerSurface

RESOLVED_CONFIG = "config.yaml"


@dataclass
class Evaluation:
    """What one evaluation produced: scalar metrics and image files (sample grids) to show people."""

    step: int
    metrics: dict[str, float]
    images: dict[str, Path] = field(default_factory=dict)


@dataclass
class Report:
    """One message from a trial to whoever runs it. `checkpoint` is a directory the receiver may
    copy or keep; `final` marks the last report, which carries the exports. `params` (facts of the
    run such as its held-out split, `split.*`) come once, with the first report of a run."""

    step: int
    metrics: dict[str, float]
    images: dict[str, Path] = field(default_factory=dict)
    checkpoint: Path | None = None
    exports: dict[str, Path] = field(default_factory=dict)
    final: bool = False
    params: dict[str, str] = field(default_factory=dict)


Reporter = Callable[[Report], None]


@runtime_checkable
class Trainer(Protocol):
    """What every trainer (LoRA, SpriteVAE, distillation, full training) provides."""

    surface: ClassVar[TrainerSurface]
    """What it reads, writes and reports (checked by `validate`; see `trainers.surface`)."""
    step: int
    """Optimizer steps taken so far."""

    @staticmethod
    def batches_per_epoch(experiment: Experiment, dataset: Any) -> int:
        """Micro-batches in one pass over its training data (what `train.epochs` counts)."""
        ...

    def setup(self) -> None:
        """Load data and models, build optimizer and schedule. Heavy work lives here, not in __init__."""

    def total_steps(self) -> int:
        """The trial's step budget: `surface.budget_steps` over `batches_per_epoch`."""
        ...

    def run_params(self) -> dict[str, str]:
        """Facts of the run to record once as params, after `setup`: at least the held-out split
        (`trainers.heldout.split_params`)."""
        ...

    def train(self, steps: int, log: Callable[[int, dict[str, float]], None]) -> dict[str, float]:
        """Take `steps` more optimizer steps; call `log(step, metrics)` for training metrics as it goes.
        Returns the last training metrics. Raises FloatingPointError when the loss is not finite."""
        ...

    def evaluate(self, out_dir: Path) -> Evaluation:
        """Compute metrics and write sample images under `out_dir`."""
        ...

    def save(self, directory: Path) -> None:
        """Write a checkpoint that `restore` turns back into exactly this state."""

    def restore(self, directory: Path) -> None:
        """Load a checkpoint written by `save` (after `setup`)."""

    def export(self, directory: Path) -> dict[str, Path]:
        """Write the trained artifacts (formats from `export.formats`); returns name -> file."""
        ...


def write_resolved_config(directory: Path, experiment: Experiment, extra: dict | None = None) -> None:
    """Put the resolved config (and optional facts such as sampled params) beside an artifact."""
    atomic_write_text(directory / RESOLVED_CONFIG, dump_resolved(experiment))
    if extra:
        atomic_write_text(directory / "trial.json", json.dumps(extra, indent=2, sort_keys=True))


def _with_params_once(report: Reporter, params: dict[str, str]) -> Reporter:
    """`report`, with `params` attached to the first report it sends."""
    pending = dict(params)

    def send(r: Report) -> None:
        if pending:
            r.params = {**pending, **r.params}
            pending.clear()
        report(r)

    return send


def run_trial(trainer: Trainer, experiment: Experiment, workdir: Path, report: Reporter,
              *, resume_from: Path | None = None, log_every: int | None = None) -> Evaluation:
    """Drive `trainer` through its budget: train to each evaluation point, evaluate, checkpoint,
    report; at the end export. `resume_from` is a checkpoint directory written by an earlier run.
    The first report carries the trainer's `run_params`."""
    workdir.mkdir(parents=True, exist_ok=True)
    trainer.setup()
    if resume_from is not None:
        trainer.restore(resume_from)
    report = _with_params_once(report, trainer.run_params())
    total = trainer.total_steps()
    every = experiment.eval.every_n_steps
    log_every = log_every or experiment.tracking.log_every_n_steps

    def log(step: int, metrics: dict[str, float]) -> None:
        if step % log_every == 0:
            report(Report(step=step, metrics=metrics))

    evaluation = Evaluation(step=trainer.step, metrics={})
    checkpoint: Path | None = None
    while trainer.step < total:
        chunk = min(every - trainer.step % every, total - trainer.step)
        train_metrics = trainer.train(chunk, log)
        evaluation = trainer.evaluate(workdir / "eval" / f"step_{trainer.step:06d}")
        evaluation.metrics = {**train_metrics, **evaluation.metrics}
        checkpoint = workdir / "checkpoint"
        with staged_dir(checkpoint) as staging:  # the old checkpoint stays whole until the new one is
            trainer.save(staging)
            write_resolved_config(staging, experiment)
        if trainer.step >= total:
            # The last evaluation goes out once, as the final report with the exports: reported on its
            # own first, a scheduler could stop a trial that trained its whole budget at that report
            # (ASHA's top rung can fall on the last evaluation) and its exports would be lost.
            break
        report(Report(step=trainer.step, metrics=evaluation.metrics, images=evaluation.images,
                      checkpoint=checkpoint))
    if not evaluation.metrics:  # resumed at the end of the budget: evaluate once more
        evaluation = trainer.evaluate(workdir / "eval" / f"step_{trainer.step:06d}")
    exports = trainer.export(workdir / "export")
    write_resolved_config(workdir / "export", experiment)
    report(Report(step=trainer.step, metrics=evaluation.metrics, images=evaluation.images, exports=exports,
                  checkpoint=checkpoint, final=True))
    return evaluation
