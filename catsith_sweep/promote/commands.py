"""Subcommands `promote` and `registry list|verify`.

`promote EXPERIMENT_NAME` puts the best finished trial of the experiment's latest sweep (or `--run-id`)
into CatSith and the MLflow Model Registry (alias `champion`): a LoRA trial into the CatSith LoRA registry,
a SpriteVAE trial's ONNX encoder and decoder into a CatSith models folder (`--models`, `promote/vae.py`), a
distill trial's ONNX pipeline into a folder there (`promote/distill.py`). A multi-objective sweep has a
front, not a best: its trial is chosen by a stated rule (`--pick fastest-within 10%`, or `--run-id`;
`promote/pick.py`).
`registry list` and `registry verify` read packages as CatSith's loader does; verify exits 2 naming every problem.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from catsith_sweep.errors import UserInputError

out = Console(highlight=False, soft_wrap=True, emoji=False)
CATEGORIES = ("Aesthetic", "Entity", "Effects", "Environment", "Color")


def _fmt(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else "n/a"


def _tracking_uri(flag: str | None, file_uri: str | None) -> str:
    """--tracking-uri > the experiment file's tracking.uri > sqlite:///mlflow.db; a missing sqlite file is
    an error (MLflow would silently create an empty store there)."""
    from catsith_sweep import tracking

    uri = tracking.normalize_uri(flag or file_uri or tracking.DEFAULT_URI)
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not Path(uri[len(prefix):]).is_file():
        raise UserInputError(f"no MLflow store at {uri[len(prefix):]}: run a sweep first, or pass --tracking-uri")
    return uri


def _print_choice(choice: Any, named: bool) -> None:
    """Which sweep, why this trial: the top finished trials by the sweep's metric, and better ones that
    did not finish."""
    metric, mode = choice.metric, choice.mode
    out.print(f"using {escape(choice.sweep_note)}")
    if named:
        where = f"rank {choice.position}" if choice.position else "unranked"
        out.print(f"run {choice.run_id} (trial {choice.trial}), as asked: {where} among the finished trials of "
                  f"sweep {choice.sweep_id} by {metric} ({mode}), {metric} = {_fmt(choice.value)}")
    else:
        out.print(f"best finished trial of sweep {choice.sweep_id} by {metric} ({mode}): trial {choice.trial} "
                  f"(run {choice.run_id}), {metric} = {_fmt(choice.value)}")
    table = Table(title=f"top finished trials by {metric} ({mode})")
    for column in ("rank", "trial", "name", metric, "run id"):
        table.add_column(column)
    for i, row in enumerate(choice.top, start=1):
        mark = " <-" if row.run_id == choice.run_id else ""
        table.add_row(str(i), row.trial + mark, escape(row.name), _fmt(row.value(metric)), row.run_id)
    out.print(table)
    out.print("trials: " + ", ".join(f"{n} {k}" for k, n in choice.counts.items()))
    for row in choice.skipped:
        out.print(f"  not promoted, {row.outcome}: trial {row.trial} with {metric} = {_fmt(row.value(metric))}")


def _print_outcome(outcome: Any) -> None:
    package, version = outcome.package, outcome.version
    if outcome.nothing_new:
        out.print(f"[green]nothing new[/green]: run {outcome.choice.run_id} is already version {version.version} "
                  f"of model `{escape(version.model)}`, and package {package.slug} already holds it")
    else:
        out.print(f"package: {escape(package.message)} at {escape(str(package.path))}")
        if version.created:
            out.print(f"model registry: registered version {version.version} of model `{escape(version.model)}`")
        else:
            out.print(f"model registry: run already registered as version {version.version} of "
                      f"`{escape(version.model)}`; no new version")
    if version.retagged:
        out.print(f"  updated tags of version {version.version}: {', '.join(version.retagged)}")
    if version.champion_moved:
        moved = f" (alias previous -> version {version.previous})" if version.previous else ""
        out.print(f"alias champion -> version {version.version}{moved}")
    else:
        out.print(f"version {version.version} is already the champion")
    for note in outcome.notes:
        out.print(f"[yellow]warning:[/yellow] {escape(note)}")
    out.print(f"CatSith loads it by name {escape(repr(package.manifest.name))} from {escape(str(package.path))}")


def cmd_promote(args: argparse.Namespace) -> int:
    from catsith_sweep.promote.flow import Flags, promote_choice

    file_section, file_uri = None, None
    if args.experiment_file:
        from catsith_sweep.config import load_experiment

        loaded = load_experiment(args.experiment_file).experiment
        file_section, file_uri = loaded.promote, loaded.tracking.uri
    uri = _tracking_uri(args.tracking_uri, file_uri)
    choice = _choose(uri, args)
    from catsith_sweep.promote.vae import trial_trainer

    trainer = trial_trainer(uri, choice.row)
    if trainer == "distill":
        from catsith_sweep.promote.distill import promote_distill

        _print_distill_outcome(promote_distill(uri, args.experiment_name, choice, name=args.name,
                                               models_dir=Path(args.models) if args.models else None,
                                               file_section=file_section))
        return 0
    if trainer == "vae":
        from catsith_sweep.promote.vae import promote_vae

        for flag in ("registry", "category"):
            if getattr(args, flag):
                out.print(f"[yellow]note:[/yellow] --{flag} is for LoRA trials; ignored for this SpriteVAE trial")
        _print_vae_outcome(promote_vae(uri, args.experiment_name, choice, name=args.name,
                                       models_dir=Path(args.models) if args.models else None,
                                       file_section=file_section))
        return 0
    if args.models:
        out.print("[yellow]note:[/yellow] --models is for SpriteVAE trials; ignored for this LoRA trial")
    flags = Flags(name=args.name, registry=Path(args.registry) if args.registry else None, category=args.category,
                  file_section=file_section)
    _print_outcome(promote_choice(uri, args.experiment_name, choice, flags))
    return 0


def _choose(uri: str, args: argparse.Namespace) -> Any:
    """The trial to promote, printed with why: the best by the sweep's metric, or for a multi-objective
    sweep the one `--pick` (or `--run-id`) chose (promote/pick.py)."""
    from catsith_sweep.promote.pick import choose_multi, is_multi_objective
    from catsith_sweep.promote.select import choose_trial

    if is_multi_objective(uri, args.experiment_name, args.run_id, args.sweep_id):
        multi = choose_multi(uri, args.experiment_name, run_id=args.run_id, sweep_id=args.sweep_id, pick=args.pick,
                             quality=args.quality, speed=args.speed)
        _print_multi_choice(multi)
        return multi.choice
    for flag in ("pick", "quality", "speed"):
        if getattr(args, flag):
            raise UserInputError(f"--{flag} chooses among a multi-objective sweep's trials; this sweep has one "
                                 "metric, and promote takes its best finished trial (or --run-id)")
    choice = choose_trial(uri, args.experiment_name, args.run_id, args.sweep_id)
    _print_choice(choice, named=bool(args.run_id))
    return choice


def _print_multi_choice(multi: Any) -> None:
    """The rule, the trial it chose, and the trials it weighed (quality and speed side by side)."""
    choice, obj = multi.choice, multi.objectives
    out.print(f"using {escape(choice.sweep_note)}")
    out.print(f"rule: {escape(multi.rule)}")
    out.print(f"chose trial {choice.trial} (run {choice.run_id}): {obj.quality} = {_fmt(choice.row.value(obj.quality))}"
              f", {obj.speed} = {_fmt(choice.row.value(obj.speed))}")
    if multi.pick is None:
        return
    table = Table(title=f"finished trials within the rule, by {obj.speed} ({obj.speed_mode})")
    for column in ("trial", "name", obj.quality, obj.speed, "run id"):
        table.add_column(column)
    for row in choice.top:
        mark = " <-" if row.run_id == choice.run_id else ""
        table.add_row(row.trial + mark, escape(row.name), _fmt(row.value(obj.quality)), _fmt(row.value(obj.speed)),
                      row.run_id)
    out.print(table)
    out.print("trials: " + ", ".join(f"{n} {k}" for k, n in choice.counts.items()))
    for row in choice.skipped:
        out.print(f"  not promoted, {row.outcome}: trial {row.trial} with {obj.quality} = "
                  f"{_fmt(row.value(obj.quality))}, {obj.speed} = {_fmt(row.value(obj.speed))}")


def _print_distill_outcome(outcome: Any) -> None:
    pipeline, version = outcome.pipeline, outcome.version
    if outcome.nothing_new:
        out.print(f"[green]nothing new[/green]: run {outcome.choice.run_id} is already version {version.version} "
                  f"of model `{escape(version.model)}`, and {escape(str(pipeline.directory))} already holds it")
    else:
        state = "wrote the ONNX pipeline to" if pipeline.status == "written" else "already holds this run's pipeline:"
        out.print(f"models: {state} {escape(str(pipeline.directory))}")
        created = "registered" if version.created else "run already registered as"
        out.print(f"model registry: {created} version {version.version} of model `{escape(version.model)}`")
    if version.champion_moved:
        moved = f" (alias previous -> version {version.previous})" if version.previous else ""
        out.print(f"alias champion -> version {version.version}{moved}")
    else:
        out.print(f"version {version.version} is already the champion")
    out.print(f"CatSith's ONNX route loads {escape(str(pipeline.directory))} (optimum's Stable Diffusion layout)")


def _print_vae_outcome(outcome: Any) -> None:
    models, version = outcome.models, outcome.version
    files = ", ".join(path.name for path in models.files.values())
    if outcome.nothing_new:
        out.print(f"[green]nothing new[/green]: run {outcome.choice.run_id} is already version {version.version} "
                  f"of model `{escape(version.model)}`, and {escape(str(models.directory))} already holds it")
    else:
        if models.status == "written":
            out.print(f"models: wrote {files} to {escape(str(models.directory))}")
        else:
            out.print(f"models: {escape(str(models.directory))} already holds this run's files")
        if version.created:
            out.print(f"model registry: registered version {version.version} of model `{escape(version.model)}`")
        else:
            out.print(f"model registry: run already registered as version {version.version} of "
                      f"`{escape(version.model)}`; no new version")
    if version.champion_moved:
        moved = f" (alias previous -> version {version.previous})" if version.previous else ""
        out.print(f"alias champion -> version {version.version}{moved}")
    else:
        out.print(f"version {version.version} is already the champion")
    latent = models.manifest.get("latent_dim")
    out.print(f"CatSith runs sprite_vae_encoder / sprite_vae_decoder (latent_dim {latent}) from "
              f"{escape(str(models.directory))}")


def _size(n: int | None) -> str:
    """Bytes for people: 812 B, 3.1 KiB, 2.0 MiB."""
    if n is None:
        return ""
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def cmd_registry_list(args: argparse.Namespace) -> int:
    from catsith_sweep.promote.lora import default_registry
    from catsith_sweep.registry import list_packages

    root = Path(args.dir) if args.dir else default_registry()
    if not root.is_dir():
        if args.dir:
            raise UserInputError(f"{root}: no such directory")
        out.print(f"no packages: the CatSith user registry {root} does not exist yet")
        return 0
    infos = list_packages(root)
    table = Table(title=f"CatSith LoRA registry {root}")
    for column in ("name", "slug", "category", "rank", "alpha", "size", "hash"):
        table.add_column(column, overflow="fold")
    for info in infos:
        if info.error:
            table.add_row("[red](unreadable)[/red]", escape(info.slug), escape(info.error), "", "", "", "")
            continue
        table.add_row(escape(info.name or ""), escape(info.slug), info.category or "", str(info.rank),
                      f"{info.alpha:g}" if info.alpha is not None else "", _size(info.size_bytes),
                      (info.hash_hex or "")[:12])
    out.print(table)
    out.print(f"{len(infos)} package(s); check them with: python -m catsith_sweep registry verify {root}")
    return 0


def cmd_registry_verify(args: argparse.Namespace) -> int:
    from catsith_sweep.registry import verify_registry

    results = verify_registry(args.path)
    if not results:
        out.print(f"{args.path}: no packages (no sub-directory holds a manifest.json)")
        return 0
    problems = []
    for pkg, findings in results.items():
        errors = [f for f in findings if f.is_error]
        state = "[green]ok[/green]" if not errors else f"[red]{len(errors)} error(s)[/red]"
        out.print(f"{state} {escape(str(pkg))}")
        for finding in findings:
            if not finding.is_error:
                out.print(f"  [yellow]warning:[/yellow] {escape(finding.message)}")
        problems += [f"{pkg.name}: {f.message}" for f in errors]
    if problems:
        raise UserInputError(problems, title=f"{args.path}: {len(problems)} problem(s); CatSith would refuse "
                                             "these packages:")
    out.print(f"{len(results)} package(s) verified")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `promote` and `registry list|verify` to the CLI."""
    p = sub.add_parser("promote", help="put the best trial (or --run-id) into CatSith (LoRA: its registry; "
                       "SpriteVAE: a models folder) and the MLflow Model Registry as champion")
    p.add_argument("experiment_name", help="MLflow experiment (the experiment's name)")
    p.add_argument("--run-id", default=None, help="promote this trial run instead of the best one")
    p.add_argument("--sweep-id", default=None, help="the best trial of this sweep (default: the newest finished "
                   "sweep; an interrupted newer one is passed over)")
    p.add_argument("--registry", default=None, help="CatSith LoRA registry dir (default: promote.registry, "
                   "else the CatSith user registry)")
    p.add_argument("--name", default=None, help="package name and registered model name")
    p.add_argument("--category", choices=CATEGORIES, default=None, help="LoRA category (default: promote.category)")
    p.add_argument("--models", default=None, help="SpriteVAE and distill trials: CatSith models folder for the "
                   "ONNX encoder and decoder, or the distilled ONNX pipeline's folder (default: promote.models_dir, "
                   "else models/)")
    p.add_argument("--pick", nargs=2, default=None, metavar=("RULE", "TOLERANCE"),
                   help="multi-objective sweeps: `--pick fastest-within 10%%`, the trial best on the speed objective "
                   "whose quality is within 10%% of the teacher's (else the baseline's); the default rule there")
    p.add_argument("--quality", default=None, help="--pick: the quality objective (default: the sweep's first)")
    p.add_argument("--speed", default=None, help="--pick: the speed objective (default: the sweep's last)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the experiment file's, "
                   "else sqlite:///mlflow.db)")
    p.add_argument("--experiment-file", default=None, help="experiment YAML whose promote section overrides "
                   "the one the trial logged")
    p.set_defaults(func=cmd_promote)
    registry = sub.add_parser("registry", help="CatSith LoRA registry tools").add_subparsers(
        dest="registry_cmd", required=True)
    p = registry.add_parser("list", help="packages of a registry (default: the CatSith user registry)")
    p.add_argument("dir", nargs="?", default=None)
    p.set_defaults(func=cmd_registry_list)
    p = registry.add_parser("verify", help="check packages as CatSith's loader does; exit 2 on any error")
    p.add_argument("path", help="a registry dir or one package dir")
    p.set_defaults(func=cmd_registry_verify)
