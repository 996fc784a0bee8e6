"""A LoRA trial's logged artifacts -> a CatSith registry package (catsith-formats.md §1 and §2).

What a LoRA trial logs (see `sweep/trainable.py`): `export/pytorch_lora_weights.safetensors` (PEFT
naming, alpha folded into lora_B, the trained alphas in the header), `export/config.yaml` (the resolved
experiment) and `samples/samples.png` (the final sample grid). The package gets:

* `weights.bin` (LORA v1) and `manifest.json`, written by `registry.write_package` from the layers
  `load_lora_file` reads back (rank and alpha of the trial, unfolded);
* `preview.png`: the trial's sample grid;
* `pytorch_lora_weights.safetensors`: the trial's PEFT file as it is, the file CatSith's diffusion
  pipeline loads directly. Its diffusers default name lets `pipe.load_lora_weights(<package dir>)` work too.

Settings (name, category, tags, ...) come from the logged experiment's `promote` section, overlaid by
the keys an experiment file sets explicitly, overlaid by command-line flags.

Names: CatSith indexes its registry by name, so two packages with one name shadow each other and which
one loads is left to directory order. When the chosen name is already used by a different LoRA (say the
previous champion), the package is named `<name>-2`, `<name>-3`, ... (and says so): every promoted LoRA
stays reachable, and the game keeps loading the one it names until it is pointed at the new one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from catsith_sweep.config.schema import Experiment, PromoteSection
from catsith_sweep.errors import UserInputError
from catsith_sweep.export.lora_formats import LoraLayer, load_lora_file, save_peft_safetensors
from catsith_sweep.registry import (
    Category,
    PackageResult,
    encode_weights_bin,
    list_packages,
    package_hash,
    write_package,
)
from catsith_sweep.registry.manifest import hash_hex
from catsith_sweep.registry.package import common_alpha  # the alpha fold write_package applies
from catsith_sweep.tracking import artifacts

PEFT_FILE = "pytorch_lora_weights.safetensors"
COMPATIBLE_WITH = (("diffusion_v1", "1"),)


def default_registry() -> Path:
    """CatSith's user LoRA registry: `<user data dir>/catsith/loras` (`~/.local/share/...` on Linux)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("catsith", appauthor=False)) / "loras"


def slugify(name: str) -> str:
    """A package directory name from a LoRA name: lower case, runs of other characters become '-'."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")[:100].rstrip("-._")
    return slug or "lora"


@dataclass(frozen=True)
class PromoteSettings:
    """Everything the package's manifest takes from the experiment and the command line."""

    registry: Path
    name: str
    category: Category
    description: str
    tags: list[str]
    license: str
    creator: dict[str, str | None]

    @property
    def slug(self) -> str:
        return slugify(self.name)


def resolve_settings(
    logged: Experiment,
    file_section: PromoteSection | None = None,
    *,
    registry: str | Path | None = None,
    name: str | None = None,
    category: str | None = None,
) -> PromoteSettings:
    """Logged `promote` section < keys set in an experiment file's `promote` section < flags."""
    section = logged.promote
    if file_section is not None:
        explicit = {key: getattr(file_section, key) for key in file_section.model_fields_set}
        section = section.model_copy(update=explicit)
    chosen_name = name or section.name or logged.name
    if not chosen_name.strip():
        raise UserInputError("the package name is empty (CatSith indexes LoRAs by name)")
    return PromoteSettings(
        registry=Path(registry or section.registry or default_registry()).expanduser().resolve(),
        name=chosen_name,
        category=Category(category or section.category),
        description=section.description,
        tags=list(section.tags),
        license=section.license,
        creator=section.creator.model_dump(),
    )


@dataclass(frozen=True)
class TrialFiles:
    """A LoRA trial's artifacts, downloaded: its experiment, layers, PEFT file and sample grid."""

    experiment: Experiment
    layers: list[LoraLayer]
    peft: Path
    preview: Path | None
    notes: list[str] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return self.layers[0].rank

    @property
    def alpha(self) -> float:
        return self.layers[0].alpha


def logged_experiment(config: Path, run_id: str) -> Experiment:
    """The experiment a trial logged as `export/config.yaml` (UserInputError when unreadable)."""
    try:
        raw: Any = yaml.safe_load(config.read_text(encoding="utf-8"))
        return Experiment.model_validate(raw)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise UserInputError(f"run {run_id}: its logged {artifacts.EXPORT_CONFIG} is unreadable ({exc})") from exc


def download_trial(uri: str, run_id: str, dst: Path) -> TrialFiles:
    """Fetch a LoRA trial's export and sample grid into `dst` and read its layers."""
    export = artifacts.download(uri, run_id, artifacts.EXPORT_DIR, dst)
    if export is None or not (export / artifacts.CONFIG_FILE).is_file():
        raise UserInputError(f"run {run_id} has no {artifacts.EXPORT_CONFIG} artifact: it exported nothing "
                             "(trials log their exports when they finish)")
    experiment = logged_experiment(export / artifacts.CONFIG_FILE, run_id)
    if experiment.trainer != "lora":
        raise UserInputError(f"run {run_id} trained a `{experiment.trainer}` model; this command promotes LoRA "
                             "trials (trainer: lora) into the CatSith LoRA registry")
    notes = []
    peft = export / PEFT_FILE
    if peft.is_file():
        layers = load_lora_file(peft)
    else:
        json_files = sorted(export.glob("*.lora.json"))
        if not json_files:
            raise UserInputError(f"run {run_id} exported neither {PEFT_FILE} nor a CatSith JSON LoRA; add "
                                 "peft_safetensors to export.formats")
        layers = load_lora_file(json_files[0])
        peft = save_peft_safetensors(layers, dst / "converted" / PEFT_FILE)
        notes.append(f"the trial exported no {PEFT_FILE}; written from {json_files[0].name}")
    preview = artifacts.download(uri, run_id, artifacts.SAMPLES_PNG, dst)
    if preview is None:
        notes.append(f"the trial logged no {artifacts.SAMPLES_PNG}: the package has no preview")
    return TrialFiles(experiment, layers, peft, preview, notes)


def free_name(registry: Path, name: str, category: Category, layers: list[LoraLayer]) -> tuple[str, str | None]:
    """`name`, or the first of `name-2`, `name-3`, ... that no other LoRA of the registry uses.

    A candidate already used by a package holding this very LoRA (same package hash) is returned as is,
    so promoting the same trial again finds its package. The second value says why the name changed.
    """
    hashes: dict[str, set[str]] = {}
    for info in list_packages(registry):
        if info.name is not None and info.hash_hex is not None:
            hashes.setdefault(info.name, set()).add(info.hash_hex)
    weights = encode_weights_bin(common_alpha(layers)[1])
    candidate, n = name, 1
    while candidate in hashes and hash_hex(package_hash(candidate, category, weights)) not in hashes[candidate]:
        n += 1
        candidate = f"{name}-{n}"
    if candidate == name:
        return name, None
    return candidate, (f"name {name!r} is used by another LoRA in {registry} (CatSith indexes LoRAs by name), so "
                       f"this one is named {candidate!r}; pass --name to choose")


def write_lora_package(
    files: TrialFiles, settings: PromoteSettings, *, description: str, preview_description: str
) -> PackageResult:
    """Write the CatSith package (atomic, never overwriting; see `registry.package`)."""
    previews = [(files.preview, preview_description)] if files.preview is not None else []
    return write_package(
        settings.registry,
        slug=settings.slug,
        layers=files.layers,
        name=settings.name,
        category=settings.category,
        creator=settings.creator,
        description=description,
        tags=settings.tags,
        license=settings.license,
        previews=previews,
        compatible_with=COMPATIBLE_WITH,
        extra_files={PEFT_FILE: files.peft},
    )
