"""Typed experiment configs, YAML loading with line numbers, overrides and search spaces."""

from catsith_sweep.config.loader import LoadedExperiment, apply_params, dump_resolved, load_experiment
from catsith_sweep.config.schema import Experiment

__all__ = ["Experiment", "LoadedExperiment", "apply_params", "dump_resolved", "load_experiment"]
