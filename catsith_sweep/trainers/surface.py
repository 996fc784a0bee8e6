"""What each trainer honours, declared: the config keys it reads, the export formats it writes, the
metrics it reports and how its step budget is counted. Plain data (no torch), so `validate` and
`run --dry-run` check an experiment against it in milliseconds.

The rule `check_surface` applies: a key the user set (in the YAML file, as a `key=value` override or
in the search space) that the chosen trainer does not read is an error naming the key and where it
was set; so is an export format it cannot write and a `search.metric` (or plotted metric) it does not
report. Keys left at their defaults are never a problem.

A new trainer adds its `TrainerSurface` to `SURFACES` (and its class sets `surface = ...`); the tests
check that every key a surface names exists in the schema and that real evaluations report exactly
the declared metrics.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from catsith_sweep.config import LoadedExperiment
    from catsith_sweep.config.schema import Experiment

# Read by the engine for every trainer (the trial loop, tracking, search, promotion), so never
# "ignored". `export.formats` is checked against each trainer's formats instead.
ENGINE_KEYS: tuple[str, ...] = (
    "name", "description", "trainer", "model.cache_dir", "eval.every_n_steps", "eval.noise_seeds",
    "export.formats", "search", "resources", "tracking", "promote",
)
# Groups of keys that several trainers read. A key names itself and everything under it.
# Every trainer holds out `data.val_fraction` of the entities (drawn with `data.split_seed`): see
# `trainers.heldout`.
DATASET_KEYS = ("data.path", "data.synth_seed", "data.synth_variants", "data.synth_style", "data.caption_colors",
                "data.resolution",
                "data.val_fraction", "data.split_seed")
LOOP_KEYS = (
    "train.max_steps", "train.epochs", "train.batch_size", "train.gradient_accumulation_steps",
    "train.learning_rate", "train.lr_scheduler", "train.lr_warmup_steps", "train.weight_decay",
    "train.max_grad_norm", "train.mixed_precision", "train.seed", "train.device", "train.num_threads",
)
SAMPLING_EVAL_KEYS = ("eval.prompts", "eval.seeds", "eval.num_inference_steps", "eval.guidance_scale",
                      "eval.num_metric_samples", "eval.feature_extractor")
# `{fx}` is the feature extractor's prefix: `sprite_` for eval.feature_extractor sprite, none for inception.
SAMPLING_METRICS = ("{fx}fid", "{fx}kid", "{fx}kid_std", "{fx}lpips", "kind_accuracy", "direction_accuracy",
                    "palette_distance")
# The held-out split's keys: fixed for a sweep, never searched (trials are ranked on that split).
SPLIT_KEYS = ("data.val_fraction", "data.split_seed")
# Keys that change how many optimizer steps (and so evaluations) a trial takes, for every trainer
# (the split's: epochs count batches of its training side).
BUDGET_KEYS = ("train.max_steps", "train.epochs", "train.batch_size", "train.gradient_accumulation_steps",
               "eval.every_n_steps", "data.val_fraction", "data.split_seed")


@dataclass(frozen=True)
class TrainerSurface:
    """One trainer's declared surface."""

    name: str
    """The `trainer:` value."""
    reads: tuple[str, ...]
    """Dotted config keys the trainer reads besides `ENGINE_KEYS`; a key covers everything under it."""
    export_formats: tuple[str, ...]
    """`export.formats` values it can write."""
    default_formats: tuple[str, ...]
    """What it writes when `export.formats` is empty."""
    metrics: tuple[str, ...]
    """Names in its evaluation reports (training metrics included), usable as `search.metric`."""
    steps_before_epochs: str | None = None
    """A key counting steps that come before `train.epochs` (the full trainer's VAE phase)."""
    budget_keys: tuple[str, ...] = ()
    """Keys besides `BUDGET_KEYS` that change its step count."""
    needs_base: bool = False
    """Starts from `model.base` (built or downloaded before the sweep)."""
    cost_keys: tuple[str, ...] = ()
    """Keys whose value changes what a training step costs, not only what it learns (a loss term that is
    skipped at weight 0, the model's size): the planner times each searched value (`cost_variants`)."""

    def read_keys(self) -> tuple[str, ...]:
        return (*ENGINE_KEYS, *self.reads)

    def reads_key(self, dotted: str) -> bool:
        """Whether a value at `dotted` is read: the key itself, a section above it or a key under it
        (for a section given as a whole) is declared."""
        return any(dotted == key or dotted.startswith(f"{key}.") or key.startswith(f"{dotted}.")
                   for key in self.read_keys())

    def metric_names(self, experiment: Experiment) -> list[str]:
        fx = "sprite_" if experiment.eval.feature_extractor == "sprite" else ""
        return [name.format(fx=fx) for name in self.metrics]

    def formats(self, experiment: Experiment) -> list[str]:
        """The formats this experiment's trials write (refusing the ones the trainer cannot write)."""
        from catsith_sweep.errors import ConfigError

        chosen = list(experiment.export.formats or self.default_formats)
        unsupported = [f for f in chosen if f not in self.export_formats]
        if unsupported:
            raise ConfigError(f"export.formats: trainer `{self.name}` cannot write {', '.join(unsupported)}; "
                              f"it writes: {', '.join(self.export_formats)}")
        return chosen


LORA = TrainerSurface(
    name="lora",
    reads=(*DATASET_KEYS, "data.augment", "data.cache_latents", "model.base", "model.revision", *LOOP_KEYS,
           "train.gradient_checkpointing", *SAMPLING_EVAL_KEYS, "lora"),
    export_formats=("peft_safetensors", "kohya_safetensors", "catsith_json"),
    default_formats=("peft_safetensors", "catsith_json"),
    metrics=(*SAMPLING_METRICS, "loss", "lr"),
    needs_base=True,
)
VAE = TrainerSurface(
    name="vae",
    reads=(*DATASET_KEYS, "data.augment", *LOOP_KEYS, "eval.num_metric_samples", "vae"),
    export_formats=("onnx",),
    default_formats=("onnx",),
    metrics=("recon_mse", "psnr", "sprite_lpips", "kl", "palette_distance", "active_latents",
             "sprite_fid_prior", "sprite_kid_prior", "sprite_kid_std_prior", "sprite_lpips_prior",
             "palette_distance_prior", "direction_consistency", "direction_consistency_ratio",
             "loss", "recon", "kl_train", "perceptual", "direction", "kl_weight", "lr"),
    # The perceptual term runs the sprite net on every batch (off at weight 0): vae_beta's trials took
    # 62 s at weight 0 and 70-88 s at 10 or 50 (plan5 store, 2026-12-01).
    cost_keys=("vae.perceptual_weight", "vae.hidden_dims"),
)
FULL = TrainerSurface(
    name="full",
    reads=(*DATASET_KEYS, *LOOP_KEYS, "train.gradient_checkpointing", *SAMPLING_EVAL_KEYS, "full"),
    export_formats=("diffusers",),
    default_formats=("diffusers",),
    # Evaluations in the VAE phase carry its training metrics only; later ones the sampling metrics.
    metrics=(*SAMPLING_METRICS, "loss", "lr", "vae_recon", "vae_kl"),
    steps_before_epochs="full.vae_steps",
    budget_keys=("full.vae_steps",),
)
DISTILL = TrainerSurface(
    name="distill",
    reads=(*DATASET_KEYS, "data.augment", "data.cache_latents", "model.base", "model.revision", *LOOP_KEYS,
           "train.gradient_checkpointing", *SAMPLING_EVAL_KEYS, "distill"),
    export_formats=("diffusers", "onnx"),
    default_formats=("diffusers",),
    # Sampling metrics of the student, each raw loss term, and the speed side measured beside the teacher.
    metrics=(*SAMPLING_METRICS, "loss", "lr", "loss_task", "loss_output", "loss_feature", "loss_perceptual",
             "latency_ms", "teacher_latency_ms", "latency_ratio", "unet_params", "teacher_unet_params"),
    needs_base=True,
    cost_keys=("distill.level",),  # the student's size
)
SURFACES: dict[str, TrainerSurface] = {s.name: s for s in (LORA, VAE, FULL, DISTILL)}


# ---- budgets -----------------------------------------------------------------------------------
def budget_steps(experiment: Experiment, batches_per_epoch: Callable[[], int]) -> int:
    """A trial's optimizer steps: `train.max_steps`, or `train.epochs` passes of `batches_per_epoch()`
    micro-batches, `gradient_accumulation_steps` to a step (after the trainer's steps before epochs).
    The one formula of every trainer; `batches_per_epoch` is only called for an epoch budget."""
    train = experiment.train
    if train.max_steps is not None:
        return train.max_steps
    surface = SURFACES[experiment.trainer]
    before = int(_get(experiment, surface.steps_before_epochs)) if surface.steps_before_epochs else 0
    return before + -(-batches_per_epoch() // train.gradient_accumulation_steps) * int(train.epochs or 1)


def budget_evaluations(total_steps: int, every_n_steps: int) -> int:
    """Evaluations `run_trial` makes in `total_steps`: every `every_n_steps` and at the end."""
    return max(1, -(-total_steps // every_n_steps))


def _searched_combinations(space: dict[str, Any], keys: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Every combination of the candidate values of the searched keys among `keys` ({} when none is)."""
    searched = [k for k in space if k in keys]
    for values in itertools.product(*(space[k].candidate_values() for k in searched)):
        yield dict(zip(searched, values, strict=True))


def budget_variants(experiment: Experiment, space: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every combination of the candidate values of searched keys that change the budget ({} when
    none does), so a sweep can size its scheduler for the longest trial."""
    yield from _searched_combinations(space, (*BUDGET_KEYS, *SURFACES[experiment.trainer].budget_keys))


def cost_variants(experiment: Experiment, space: dict[str, Any], *, limit: int = 6) -> list[dict[str, Any]]:
    """Combinations of the candidate values of searched keys that change a step's cost (the trainer's
    `cost_keys`), at most `limit` (the first ones; [] when no such key is searched)."""
    combos = list(itertools.islice(_searched_combinations(space, SURFACES[experiment.trainer].cost_keys), limit))
    return [] if combos == [{}] else combos


def _get(experiment: Experiment, dotted: str) -> Any:
    node: Any = experiment
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


# ---- the check ---------------------------------------------------------------------------------
@dataclass
class _Where:
    """Where a key was set, for `file:line` in messages (the loader's rule: command line first)."""

    path: Path
    lines: dict[Any, int]
    overrides: list[str]

    def override(self, dotted: str) -> str | None:
        for text in self.overrides:
            key = text.partition("=")[0].strip()
            if key == dotted or dotted.startswith(f"{key}.") or key.startswith(f"{dotted}."):
                return text
        return None

    def is_set(self, dotted: str, loc: tuple[Any, ...]) -> bool:
        return self.override(dotted) is not None or loc in self.lines

    def __call__(self, dotted: str, loc: tuple[Any, ...] | None = None, path: Path | None = None,
                 lines: dict[Any, int] | None = None) -> str:
        text = self.override(dotted)
        if text is not None:
            return f"command line `{text}`"
        from catsith_sweep.config.yaml_lines import line_of

        path, lines = path or self.path, self.lines if lines is None else lines
        line = line_of(lines, loc if loc is not None else tuple(dotted.split(".")))
        return f"{path}:{line}" if line else str(path)


def user_set_keys(raw: Any, overrides: list[str]) -> dict[str, tuple[str, ...]]:
    """Dotted keys whose values the user wrote (YAML leaves, then command-line overrides), each with
    its location in the YAML tree. Lists are values, not sections."""
    found: dict[str, tuple[str, ...]] = {}

    def walk(node: Any, loc: tuple[str, ...]) -> None:
        if isinstance(node, dict) and node and loc[:1] != ("search",):
            for key, value in node.items():
                walk(value, (*loc, str(key)))
        elif loc:
            found[".".join(loc)] = loc

    walk(raw if isinstance(raw, dict) else {}, ())
    for text in overrides:
        key, _, value_text = text.partition("=")
        try:
            value = yaml.safe_load(value_text) if value_text.strip() else None
        except yaml.YAMLError:
            value = value_text
        dotted = key.strip()
        for replaced in [k for k in found if k == dotted or k.startswith(f"{dotted}.")]:
            del found[replaced]  # the override replaces the file's value, sections included
        walk(value, tuple(dotted.split(".")))
    return found


def surface_problems(loaded: LoadedExperiment) -> list[str]:
    """Every way `loaded` asks its trainer for something it does not do, as `where key: message`."""
    from catsith_sweep.config.yaml_lines import load_yaml_with_lines

    exp = loaded.experiment
    surface = SURFACES[exp.trainer]
    raw, lines = load_yaml_with_lines(loaded.path)
    where = _Where(loaded.path, lines, loaded.overrides)
    problems = [f"{where(key, loc)} {key}: {_unread(surface, key)}"
                for key, loc in user_set_keys(raw, loaded.overrides).items() if not surface.reads_key(key)]
    space_lines = load_yaml_with_lines(loaded.space_file)[1] if loaded.space_file else {}
    inline = (raw.get("search") or {}).get("space") or {} if isinstance(raw, dict) else {}
    for key in loaded.space:
        spot = (where(f"search.space.{key}", ("search", "space", key)) if key in inline
                else where(f"search.space.{key}", ("space", key), loaded.space_file, space_lines))
        if not surface.reads_key(key):
            problems.append(f"{spot} search.space.{key}: {_unread(surface, key)}")
        elif key in SPLIT_KEYS:
            problems.append(f"{spot} search.space.{key}: the held-out split must be the same in every trial "
                            f"of a sweep (their metrics are compared on it); set `{key}` in the file instead")
    unsupported = [f for f in exp.export.formats or () if f not in surface.export_formats]
    if unsupported:
        problems.append(f"{where('export.formats')} export.formats: trainer `{surface.name}` cannot write "
                        f"{', '.join(unsupported)}; it writes: {', '.join(surface.export_formats)}")
    reported = surface.metric_names(exp)
    wanted: list[tuple[str, tuple[Any, ...], str]] = [("search.metric", ("search", "metric"), m)
                                                      for m in exp.search.metrics()]
    wanted += [(f"search.plots[{i}].y", ("search", "plots", i, "y"), m)
               for i, plot in enumerate(exp.search.plots) for m in plot.y]
    for shown, loc, metric in wanted:
        if metric not in reported:
            default = "" if where.is_set(shown, loc) else " (the default)"
            problems.append(f"{where(shown, loc)} {shown}: trainer `{surface.name}` does not report "
                            f"`{metric}`{default}; it reports: {', '.join(sorted(reported))}")
    return problems


def _unread(surface: TrainerSurface, key: str) -> str:
    section = key.rsplit(".", 1)[0] if "." in key else ""
    siblings = sorted({k[len(section) + 1:].split(".")[0] for k in surface.read_keys()
                       if section and k.startswith(f"{section}.")})
    what = (f"under `{section}` it reads: {', '.join(siblings)}" if siblings
            else f"it reads nothing under `{section or key}`")
    return f"trainer `{surface.name}` does not read `{key}`, so setting it would change nothing; {what}"


def check_surface(loaded: LoadedExperiment) -> None:
    """Raise ConfigError listing every `surface_problems` entry (the trainer must be implemented)."""
    from catsith_sweep.errors import ConfigError

    problems = surface_problems(loaded)
    if problems:
        raise ConfigError(problems, title=f"{loaded.path}: {len(problems)} problem(s):")
