"""Trainers: one file each, every one a class meeting `catsith_sweep.trainers.base.Trainer`.

The registry maps `trainer:` names to `module:Class` so that importing it costs nothing (torch,
diffusers and peft are imported only by the trainer actually used). A new trainer is its file plus
one line here (and its config section in `catsith_sweep.config.schema`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from catsith_sweep.config.schema import Experiment
    from catsith_sweep.trainers.base import Trainer

TRAINERS: dict[str, str] = {
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


def make_trainer(experiment: Experiment, workdir: Path) -> Trainer:
    """Instantiate the experiment's trainer (cheap: heavy work waits for `setup`)."""
    target = TRAINERS.get(experiment.trainer)
    if target is None:
        raise NotImplementedError(f"trainer `{experiment.trainer}` is not implemented yet; "
                                  f"available: {', '.join(sorted(TRAINERS))}")
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(experiment, workdir)


def prepare(experiment: Experiment, log: Callable[[str], None] = print) -> Path:
    """Once per sweep, in the driver: materialise the dataset (synth sets are generated here) and
    build the builtin base if a trainer that fine-tunes one needs it, so trials never race to do it.
    Returns the dataset folder."""
    from catsith_sweep.data.source import dataset_root
    from catsith_sweep.trainers.base_build import ensure_builtin

    root = dataset_root(experiment.data, experiment.model.cache_dir)
    if experiment.trainer in NEEDS_BASE:
        ensure_builtin(experiment.model.base, experiment.model.cache_dir, log=log)
    return root


# Trainers that start from `model.base` (the others build their model from scratch).
NEEDS_BASE = ("lora", "distill")
