"""A promotion, start to end: chosen trial -> CatSith package -> MLflow model version + aliases.

The package is written first (its hash goes into the version's tags). Both steps are idempotent, so a
promotion interrupted between them is finished by running it again: the package is then
"already_present" and the version gets created.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from catsith_sweep.config.schema import PromoteSection
from catsith_sweep.promote.lora import (
    PromoteSettings,
    TrialFiles,
    download_trial,
    free_name,
    resolve_settings,
    write_lora_package,
)
from catsith_sweep.promote.select import Choice
from catsith_sweep.registry import PackageResult
from catsith_sweep.registry.manifest import hash_hex
from catsith_sweep.tracking import tags
from catsith_sweep.tracking.model_registry import VersionResult, register_run, version_tags


@dataclass(frozen=True)
class Flags:
    """Command-line choices that override the experiment's `promote` section."""

    name: str | None = None
    """Package name and registered model name; default: `promote.name` (package) and the MLflow
    experiment name (registered model)."""
    registry: Path | None = None
    category: str | None = None
    file_section: PromoteSection | None = None
    """The `promote` section of an experiment file given on the command line."""


@dataclass(frozen=True)
class PromoteOutcome:
    """What a promotion did, for the command to report."""

    choice: Choice
    settings: PromoteSettings
    package: PackageResult
    version: VersionResult
    notes: list[str] = field(default_factory=list)

    @property
    def nothing_new(self) -> bool:
        """True when the run was already promoted: no package written, no version registered."""
        return self.package.status == "already_present" and not self.version.created


def _describe(files: TrialFiles, settings: PromoteSettings, choice: Choice) -> tuple[str, str]:
    """(package description, preview description); the experiment's own description wins."""
    exp = files.experiment
    value = f"{choice.value:.5g}" if choice.value is not None else "n/a"
    facts = (f"LoRA rank {files.rank}, alpha {files.alpha:g}, base {exp.model.base}; trial {choice.trial} of "
             f"sweep {choice.sweep_id}, {choice.metric} {value} ({choice.mode})")
    description = settings.description or f"{exp.description or exp.name}. {facts}"
    prompts = "its fixed evaluation prompts" if exp.eval.prompts is None else ", ".join(exp.eval.prompts)
    preview = f"sample grid of trial {choice.trial} after training: {prompts}; seeds {exp.eval.seeds}"
    return description, preview


def _package_tags(choice: Choice, package: PackageResult) -> dict[str, str]:
    return version_tags(choice.row, choice.sweep_id, choice.metric, choice.mode, {
        tags.PACKAGE_HASH: hash_hex(package.manifest.hash),
        tags.PACKAGE_PATH: str(package.path),
        tags.PACKAGE_SLUG: package.slug,
        tags.PACKAGE_NAME: package.manifest.name,
    })


def promote_choice(uri: str, experiment_name: str, choice: Choice, flags: Flags) -> PromoteOutcome:
    """Package the chosen trial into the CatSith registry and register it as the champion."""
    with tempfile.TemporaryDirectory(prefix="catsith_promote_") as tmp:
        files = download_trial(uri, choice.run_id, Path(tmp))
        settings = resolve_settings(files.experiment, flags.file_section, registry=flags.registry,
                                    name=flags.name, category=flags.category)
        name, renamed = free_name(settings.registry, settings.name, settings.category, files.layers)
        settings = replace(settings, name=name)
        description, preview = _describe(files, settings, choice)
        package = write_lora_package(files, settings, description=description, preview_description=preview)
    model = flags.name or experiment_name
    version = register_run(uri, model, choice.row, _package_tags(choice, package), description, kind="lora",
                           model_description=f"LoRA champions of the catsith_sweep experiment `{experiment_name}`")
    notes = [*files.notes, *([renamed] if renamed else []), *package.warnings]
    return PromoteOutcome(choice, settings, package, version, notes)
