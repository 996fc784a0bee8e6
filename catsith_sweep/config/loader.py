"""Load an experiment file: YAML -> overrides -> typed `Experiment` -> search space, with every problem
reported at once as `file:line key.path: rule, but got value`.

Precedence of values: command-line overrides (`key.path=value`) > the YAML file > the defaults of
`catsith_sweep.config.schema`. Search-space entries: the experiment's inline `search.space` > the
`search.space_file` it names.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from catsith_sweep.config.schema import TRAINER_NAMES, Experiment
from catsith_sweep.config.space import Categorical, Distribution, FloatRange, IntRange, SearchSpaceFile
from catsith_sweep.config.yaml_lines import (
    KeyPath,
    YamlLimitError,
    describe_yaml_error,
    line_of,
    load_yaml_with_lines,
    parse_bounded_yaml,
)
from catsith_sweep.errors import ConfigError, quote, shorten

_DIST_TAGS = {"categorical", "int", "float", "fixed"}
# Roots a search space may reach into, besides the trainer's own section.
_SEARCHABLE_ROOTS = ("model", "data", "train", "eval")


@dataclass
class LoadedExperiment:
    """A validated experiment with its resolved search space."""

    experiment: Experiment
    path: Path
    space: dict[str, Distribution] = field(default_factory=dict)
    space_file: Path | None = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class _Source:
    """Where values came from, to put a file and a line on each problem."""

    path: Path
    lines: dict[KeyPath, int]
    override_locs: dict[KeyPath, str] = field(default_factory=dict)

    def where(self, loc: KeyPath, prefix: KeyPath = ()) -> str:
        for end in range(len(loc), 0, -1):
            text = self.override_locs.get(tuple(loc[:end]))
            if text is not None:
                return f"command line `{shorten(text, limit=80)}`"
        if (*prefix, *loc) not in self.lines:
            # A key the YAML does not have, created by an override below it (`nonexistent.key=1`).
            for override_loc, text in self.override_locs.items():
                if override_loc[: len(loc)] == tuple(loc):
                    return f"command line `{shorten(text, limit=80)}`"
        line = line_of(self.lines, (*prefix, *loc))
        return f"{self.path}:{line}" if line else str(self.path)


def format_loc(loc: KeyPath) -> str:
    out = ""
    for part in loc:
        text = shorten(part)
        out += f"[{part}]" if isinstance(part, int) else (f".{text}" if out else text)
    return out


def load_experiment(path: Path | str, overrides: list[str] | None = None) -> LoadedExperiment:
    """Load and check `path`; raise ConfigError listing every problem found."""
    path = Path(path)
    overrides = list(overrides or [])
    raw, lines = load_yaml_with_lines(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1: an experiment file must be a mapping of sections, but got "
                          f"{type(raw).__name__}")
    source = _Source(path, lines)
    problems: list[str] = []
    raw = apply_overrides(raw, overrides, source, problems)
    experiment = _validate(raw, source, problems)
    space: dict[str, Distribution] = {}
    space_file = None
    if experiment is not None:
        space, space_file = _load_space(experiment, raw, source, problems)
    if problems or experiment is None:
        raise ConfigError(problems, title=f"{path}: {len(problems)} problem(s):")
    return LoadedExperiment(experiment, path, space, space_file, overrides)


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: _Source,
                    problems: list[str]) -> dict[str, Any]:
    """Set each `key.path=value` (value parsed as YAML) into a copy of `raw`."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        key, sep, value_text = text.partition("=")
        if not sep or not key.strip():
            problems.append(f"command line `{shorten(text, limit=80)}`: an override must look like key.path=value")
            continue
        try:
            value = parse_bounded_yaml(value_text)[0] if value_text.strip() else None
        except YamlLimitError as exc:  # a bound (duplicate key, .inf, alias bomb): never a plain string
            problems.append(describe_yaml_error(f"command line `{shorten(text, limit=80)}`", exc))
            continue
        except yaml.YAMLError:
            value = value_text
        loc = set_dotted(raw, key.strip(), value)
        source.override_locs[loc] = text
    return raw


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> KeyPath:
    """Set `dotted` into nested dicts; a key that itself holds dots (search-space keys) wins when it
    already exists at that level. Returns the key path used."""
    parts = dotted.split(".")
    node, loc = tree, []
    while parts:
        for take in range(len(parts), 0, -1):  # longest existing dotted key first
            candidate = ".".join(parts[:take])
            if candidate in node or take == 1:
                break
        parts = parts[take:]
        loc.append(candidate)
        if not parts:
            node[candidate] = value
        else:
            child = node.get(candidate)
            if not isinstance(child, dict):
                child = {}
                node[candidate] = child
            node = child
    return tuple(loc)


def _validate(raw: dict[str, Any], source: _Source, problems: list[str]) -> Experiment | None:
    try:
        experiment = Experiment.model_validate(raw, context={"defer_cross_checks": True})
    except ValidationError as exc:
        problems.extend(_format_validation_error(exc, source))
        return None
    for loc, message in experiment.cross_check_problems():
        problems.append(f"{source.where(loc)} {format_loc(loc)}: {message}")
    return experiment if not problems else None


def _format_validation_error(exc: ValidationError, source: _Source, prefix: KeyPath = (),
                             shown_prefix: KeyPath = ()) -> list[str]:
    out = []
    for error in exc.errors(include_url=False):
        loc = _strip_tags(tuple(error["loc"]))
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = f"unknown key `{shorten(loc[-1])}`" + _suggest(str(loc[-1]), _allowed_keys(loc[:-1]))
        elif error["type"] == "missing":
            message = "required key is missing"
        elif not isinstance(error.get("input"), dict | list) and "but got" not in message:
            message += f", but got {quote(error.get('input'))}"
        shown = format_loc((*shown_prefix, *loc)) or "(top level)"
        out.append(f"{source.where(loc, prefix)} {shown}: {message}")
    return out


def _strip_tags(loc: KeyPath) -> KeyPath:
    # Pydantic puts the discriminator tag (`int`, `float`, ...) into locations inside a space entry.
    out = list(loc)
    for i in range(1, len(out)):
        if out[i] in _DIST_TAGS and i >= 2 and out[i - 2] == "space":
            del out[i]
            break
    return tuple(out)


def _allowed_keys(loc: KeyPath) -> list[str]:
    model: Any = Experiment if not loc or loc[0] != "space" else SearchSpaceFile
    for part in loc:
        model = _field_model(model, part)
        if model is None:
            return []
    return list(model.model_fields)


def _field_model(model: type[BaseModel], name: Any) -> type[BaseModel] | None:
    info = model.model_fields.get(str(name))
    if info is None:
        return None
    candidates = [info.annotation, *get_args(info.annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel) and get_origin(candidate) is None:
            return candidate
    return None


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return f"; did you mean `{close[0]}`?"
    return f"; expected one of: {', '.join(options)}" if options else ""


def resolve_space_file(reference: str, experiment_path: Path) -> Path | None:
    """`lora` -> search_spaces/lora.yaml beside or above the experiment's folder, or in the cwd;
    a path (with `/` or `.yaml`) -> relative to the experiment file, then the cwd."""
    here = experiment_path.resolve().parent
    if "/" in reference or reference.endswith((".yaml", ".yml")):
        candidates = [here / reference, Path.cwd() / reference]
    else:
        name = f"{reference}.yaml"
        candidates = [here.parent / "search_spaces" / name, here / "search_spaces" / name,
                      Path.cwd() / "search_spaces" / name]
    # exists(), not is_file(): a FIFO or folder named like the space is reported by the reader, not
    # hidden behind "no search-space file".
    return next((c for c in candidates if _exists(c)), None)


def _exists(path: Path) -> bool:
    """Path.exists, with a name the OS refuses (too long, say) counted as absent."""
    try:
        return path.exists()
    except OSError:
        return False


def _load_space(experiment: Experiment, raw: dict[str, Any], source: _Source,
                problems: list[str]) -> tuple[dict[str, Distribution], Path | None]:
    merged: dict[str, tuple[Distribution, _Source, KeyPath]] = {}
    space_file = None
    reference = experiment.search.space_file
    if reference:
        space_file = resolve_space_file(reference, source.path)
        if space_file is None:
            problems.append(f"{source.where(('search', 'space_file'))} search.space_file: no search-space "
                            f"file `{shorten(reference)}` (looked for search_spaces/NAME.yaml beside and "
                            "above the experiment, and in the working directory)")
        else:
            file_space, file_source = _read_space_file(space_file, experiment.trainer, problems)
            for key, dist in file_space.items():
                merged[key] = (dist, file_source, ("space", key))
    for key, dist in experiment.search.space.items():
        merged[key] = (dist, source, ("search", "space", key))
    for key, (dist, src, loc) in merged.items():
        for problem in _check_space_key(key, dist, experiment, raw):
            problems.append(f"{src.where(loc)} search.space.{shorten(key)}: {problem}")
    if experiment.search.sampler == "grid":
        problems.extend(_grid_problems(experiment, {k: (d, src.where(loc)) for k, (d, src, loc) in merged.items()},
                                       source.where(("search", "num_samples"))))
    for index, plot in enumerate(experiment.search.plots):
        if plot.x not in merged:
            loc = ("search", "plots", index, "x")
            problems.append(f"{source.where(loc)} {format_loc(loc)}: `{shorten(plot.x)}` is not a searched key"
                            + _suggest(plot.x, list(merged)))
    return {key: value[0] for key, value in merged.items()}, space_file


def _grid_problems(experiment: Experiment, space: dict[str, tuple[Distribution, str]], where_samples: str) -> list[str]:
    """`sampler: grid` enumerates every combination: each key needs finite values, and more trials than
    combinations would only repeat some."""
    problems, combinations = [], 1
    for key, (dist, where) in space.items():
        if isinstance(dist, FloatRange) and dist.step is None:
            problems.append(f"{where} search.space.{shorten(key)}: sampler `grid` needs finite values, but this "
                            "float range is continuous: give it a `step`, or make it categorical")
            continue
        if isinstance(dist, Categorical):
            combinations *= len(dist.values)
        elif isinstance(dist, IntRange):
            combinations *= len(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatRange) and dist.step is not None:
            combinations *= int((dist.high - dist.low) / dist.step + 1e-9) + 1
    samples = experiment.search.num_samples
    if not problems and samples > combinations:
        problems.append(f"{where_samples} search.num_samples: sampler `grid` has {combinations} combinations, "
                        f"but num_samples is {samples}: at most {combinations} (more would repeat some)")
    return problems


def _read_space_file(path: Path, trainer: str, problems: list[str]) -> tuple[dict[str, Distribution], _Source]:
    """The distributions of a search-space file (parsed once), and where its keys are."""
    source = _Source(path, {})
    try:
        data, source.lines = load_yaml_with_lines(path)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return {}, source
    if not isinstance(data, dict):
        # Not the file's text: a space_file pointing at /etc/passwd must not print it.
        problems.append(f"{path}:1: a search-space file must be a mapping with a `space` key, but got "
                        f"{type(data).__name__}")
        return {}, source
    declared = data.get("trainer") if isinstance(data, dict) else None
    if declared is not None and declared != trainer:
        problems.append(f"{source.where(('trainer',))} trainer: this space is for trainer "
                        f"`{shorten(declared)}`, but the experiment's trainer is `{trainer}`")
    try:
        parsed = SearchSpaceFile.model_validate(data)
    except ValidationError as exc:
        problems.extend(_format_validation_error(exc, source, shown_prefix=("search",)))
        return {}, source
    return dict(parsed.space), source


def _check_space_key(key: str, dist: Distribution, experiment: Experiment, raw: dict[str, Any]) -> list[str]:
    parts = tuple(key.split("."))
    root = parts[0]
    if root in TRAINER_NAMES and root != experiment.trainer:
        return [f"`{root}` keys belong to trainer `{root}`, but the experiment's trainer is "
                f"`{experiment.trainer}`"]
    allowed_roots = (*_SEARCHABLE_ROOTS, experiment.trainer)
    if root not in allowed_roots:
        return [f"cannot search over `{shorten(root)}`" + _suggest(root, list(allowed_roots))
                + f" (searchable sections: {', '.join(allowed_roots)})"]
    model: Any = Experiment
    for depth, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            where = ".".join(parts[:depth]) or "the experiment"
            options = list(model.model_fields) if model is not None else []
            return [f"`{shorten(where)}` has no key `{shorten(part)}`" + _suggest(part, options)]
        model = _field_model(model, part) if depth < len(parts) - 1 else None
    problems = []
    for value in dist.candidate_values():
        trial_raw = copy.deepcopy(raw)
        set_dotted(trial_raw, key, value)
        trial_raw.get("search", {}).pop("space", None)
        try:
            Experiment.model_validate(trial_raw, context={"defer_cross_checks": True})
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                if tuple(error["loc"])[: len(parts)] == parts:
                    msg = str(error["msg"]).removeprefix("Value error, ")
                    problems.append(f"value {quote(value)} is not valid for `{shorten(key)}`: {msg}")
    return problems


def apply_params(experiment: Experiment, params: dict[str, Any]) -> Experiment:
    """The experiment with sampled `params` (dotted key -> value) set, validated again."""
    raw = experiment.model_dump(mode="python")
    for key, value in params.items():
        set_dotted(raw, key, value)
    return Experiment.model_validate(raw)


def dump_resolved(experiment: Experiment) -> str:
    """The fully resolved config as YAML (saved beside every checkpoint and export)."""
    return yaml.safe_dump(experiment.model_dump(mode="json"), sort_keys=False)
