"""Trainers: one file each, every one a class meeting `catsith_sweep.trainers.base.Trainer`.

The registry maps `trainer:` names to `module:Class` so that importing it costs nothing (torch,
diffusers and peft are imported only by the trainer actually used). A new trainer (distillation, say)
is built from these parts:

- its config section in `catsith_sweep.config.schema`, read in `__init__` as
  `experiment.trainer_config(DistillSection)` (typed, no cast);
- its `TrainerSurface` in `trainers.surface` (keys it reads, export formats, metric names, steps
  before epochs), added to `SURFACES` and set as the class attribute `surface`: `validate` and
  `run --dry-run` refuse keys it ignores, formats it cannot write and metrics it does not report;
- `setup` starts with `self.surface.formats(self.exp)` and `self.rt = runtime.start_runtime(self.exp)`
  (threads, device, precision, seeds, GradScaler);
- one readable loop in `train`: micro-batches under `runtime.autocast(self.rt)`, `check_finite`,
  `backward`, then `optimizer_step` (unscale, clip, step, zero, schedule);
- held-out evaluation (`trainers.heldout`): in `setup`, right after opening the dataset,
  `self.split = heldout.experiment_split(self.exp, dataset)` (whole entities, `data.val_fraction`,
  `data.split_seed`; too small to measure is refused there); train only on `split.train`; compute
  every selection metric on `split.heldout`, with the sprite net from
  `sampling.sprite_net(dataset, exp, train_indices=split.train)` (diffusion trainers call
  `sampling.evaluate_samples(..., split=self.split)`, which does both); figures on the training
  split, if logged at all, are named `train_<metric>`; `run_params()` returns
  `heldout.split_params(self.split)`, which `run_trial` sends once with the first report;
- `total_steps` from `surface.budget_steps` and a static `batches_per_epoch(experiment, dataset)`
  counting batches of the training split, which the sweep also calls to size its early-stopping
  scheduler;
- `save`/`restore` through `trainers.checkpoint` (pass `scaler=self.rt.scaler`);
- one line in `TRAINERS` below (and in `NEEDS_BASE` when it starts from `model.base`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from catsith_sweep.config import LoadedExperiment
    from catsith_sweep.config.schema import Experiment
    from catsith_sweep.trainers.base import Trainer

TRAINERS: dict[str, str] = {
    "distill": "catsith_sweep.trainers.distill:DistillTrainer",
    "full": "catsith_sweep.trainers.full:FullTrainer",
    "lora": "catsith_sweep.trainers.lora:LoraTrainer",
    "vae": "catsith_sweep.trainers.vae:VaeTrainer",
}


def require_implemented(experiment: Experiment, source: object) -> None:
    """Refuse, as bad input naming `source` (the experiment file), a trainer the schema knows but
    that has no implementation yet, so `validate` and `run --dry-run` say so before any trial starts."""
    from catsith_sweep.errors import UserInputError

    if experiment.trainer not in TRAINERS:
        raise UserInputError(f"{source}: trainer `{experiment.trainer}` is not implemented yet; "
                             f"available: {', '.join(sorted(TRAINERS))}")


def check_experiment(loaded: LoadedExperiment) -> None:
    """What `validate` and `run --dry-run` check beyond the schema: the trainer exists, and the
    experiment asks it only for what its surface declares (every problem at once, with file:line)."""
    from catsith_sweep.trainers.surface import check_surface

    require_implemented(loaded.experiment, loaded.path)
    check_surface(loaded)


def trainer_class(name: str) -> Any:
    """The trainer class registered as `name` (imports its module: torch and friends)."""
    target = TRAINERS.get(name)
    if target is None:
        raise NotImplementedError(f"trainer `{name}` is not implemented yet; "
                                  f"available: {', '.join(sorted(TRAINERS))}")
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_trainer(experiment: Experiment, workdir: Path) -> Trainer:
    """Instantiate the experiment's trainer (cheap: heavy work waits for `setup`)."""
    return trainer_class(experiment.trainer)(experiment, workdir)


def planned_budget(experiment: Experiment) -> tuple[int, int]:
    """(optimizer steps, evaluations) of one trial, as the trainer itself will count them. An epoch
    budget opens the dataset (it must exist: after `prepare`); a step budget does not."""
    from catsith_sweep.trainers.surface import budget_evaluations, budget_steps

    def batches_per_epoch() -> int:
        from catsith_sweep.data.source import open_dataset

        dataset = open_dataset(experiment.data, experiment.model.cache_dir, augment=False)
        return int(trainer_class(experiment.trainer).batches_per_epoch(experiment, dataset))

    steps = budget_steps(experiment, batches_per_epoch)
    return steps, budget_evaluations(steps, experiment.eval.every_n_steps)


def prepare(experiment: Experiment, log: Callable[[str], None] = print) -> Path:
    """Once per sweep, in the driver: materialise the dataset (synth sets are generated here) and
    build the builtin base if a trainer that fine-tunes one needs it, so trials never race to do it.
    Returns the dataset folder."""
    from catsith_sweep.data.source import dataset_root
    from catsith_sweep.trainers.base_build import ensure_builtin

    root = dataset_root(experiment.data, experiment.model.cache_dir)
    if experiment.trainer in NEEDS_BASE:
        # A distillation teacher may be named apart from `model.base`.
        teacher = experiment.distill.teacher if experiment.distill is not None else None
        ensure_builtin(teacher or experiment.model.base, experiment.model.cache_dir, log=log)
    return root


# Trainers that start from `model.base` (the others build their model from scratch).
NEEDS_BASE = ("lora", "distill")
