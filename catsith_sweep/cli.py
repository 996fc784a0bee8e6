"""`python -m catsith_sweep` (also `catsith-sweep`): one function per subcommand.

Exit codes: 0 success; 2 bad input (config, dataset, arguments), with every problem on stderr and no
traceback; 1 a failure while running (set CATSITH_DEBUG=1 for its traceback).

Commands that take an experiment file also take `key.path=value` overrides after it; precedence is
command line > YAML file > defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from catsith_sweep.errors import UserInputError

# emoji=False: user text such as `root:x:0` must print as written, not with `:x:` turned into an emoji.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def cmd_validate(args: argparse.Namespace) -> int:
    from catsith_sweep.config import load_experiment
    from catsith_sweep.trainers import check_experiment

    loaded = load_experiment(args.experiment, args.overrides)
    exp = loaded.experiment
    check_experiment(loaded)
    out.print(f"[green]ok[/green] {loaded.path}: experiment `{exp.name}`, trainer `{exp.trainer}`, "
              f"{len(loaded.space)} searched key(s), {exp.search.num_samples} trial(s)")
    for key, dist in loaded.space.items():
        out.print(f"  {key}: {escape(str(dist.model_dump(exclude_none=True)))}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from catsith_sweep.config import Experiment

    print(json.dumps(Experiment.model_json_schema(), indent=2))
    return 0


def cmd_dataset_validate(args: argparse.Namespace) -> int:
    from catsith_sweep.data.validate import validate_dataset

    report = validate_dataset(Path(args.dir), size=args.size)
    out.print(f"[green]ok[/green] {args.dir}: {report}")
    return 0


def cmd_dataset_caption(args: argparse.Namespace) -> int:
    from catsith_sweep.data.captions import write_captions

    count = write_captions(Path(args.dir), colors=args.colors)
    out.print(f"wrote {count} caption(s) in {Path(args.dir) / 'captions'}")
    return 0


def cmd_dataset_synth(args: argparse.Namespace) -> int:
    from catsith_sweep.data.synth import contact_sheet, synth_dataset

    report = synth_dataset(Path(args.out), seed=args.seed, size=args.size, variants=args.variants,
                           style=args.style, caption_colors=args.colors)
    out.print(f"wrote {args.out}: {report}")
    if args.contact_sheet:
        contact_sheet(Path(args.out), Path(args.contact_sheet))
        out.print(f"contact sheet: {args.contact_sheet}")
    return 0


def _color(text: str) -> tuple[int, int, int] | str:
    if text == "auto":
        return "auto"
    parts = text.lstrip("#")
    try:
        if "," in parts:
            r, g, b = (int(p) for p in parts.split(","))
        else:
            r, g, b = (int(parts[i:i + 2], 16) for i in (0, 2, 4))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, R,G,B or #RRGGBB, but got {text!r}") from None
    return (r, g, b)


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH like 32x32, but got {text!r}") from None
    return (a, b)


def cmd_dataset_import_sheet(args: argparse.Namespace) -> int:
    from catsith_sweep.data.sheets import import_sheet

    report = import_sheet(
        Path(args.sheet), Path(args.out), frame_size=args.frame_size, grid=args.grid, frames=args.frames,
        category=args.category, kind=args.kind, entity_id=args.id, directions=args.directions,
        color_key=args.color_key, size=args.size, counter_clockwise=args.counter_clockwise,
        first_direction=args.first_direction, caption_colors=args.colors,
        warn=lambda m: err.print(f"[yellow]warning:[/yellow] {escape(m)}"),
    )
    out.print(f"imported {args.sheet} into {args.out}: {report}")
    return 0


def cmd_dataset_fit(args: argparse.Namespace) -> int:
    from catsith_sweep.metrics.vae_fit import fit_dataset

    fit_dataset(Path(args.dir), base=args.base, png=Path(args.png), limit=args.limit,
                cache_dir=Path(args.cache_dir) if args.cache_dir else None, log=lambda m: out.print(escape(m)))
    return 0


def _add_colors_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--colors", choices=["guide", "measured"], default="guide",
                        help="caption colour words: guide (its rule on base_color, word for word) or measured "
                        "(grey, brown, orange, ... of the sprites' opaque pixels)")


def _add_dataset_commands(sub: argparse._SubParsersAction) -> None:
    from catsith_sweep.data.synth_styles import STYLES  # numpy only: cheap for every command

    dataset = sub.add_parser("dataset", help="sprite dataset tools").add_subparsers(dest="dataset_cmd",
                                                                                   required=True)
    p = dataset.add_parser("validate", help="check a dataset folder, listing every problem")
    p.add_argument("dir")
    p.add_argument("--size", type=int, default=None, help="expected sprite size (default: the first image's)")
    p.set_defaults(func=cmd_dataset_validate)
    p = dataset.add_parser("caption", help="write captions/*.txt with the guide's rules")
    p.add_argument("dir")
    _add_colors_option(p)
    p.set_defaults(func=cmd_dataset_caption)
    p = dataset.add_parser("synth", help="generate the procedural exospace sprite set")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--variants", type=int, default=3, help="designs per kind")
    p.add_argument("--style", choices=list(STYLES), default="16bit",
                   help="art style: 16bit (the builtin base's), handheld (four greens) or neon "
                   "(complementary saturated colours, dark violet outlines)")
    _add_colors_option(p)
    p.add_argument("--contact-sheet", default=None, help="also write a PNG contact sheet here")
    p.set_defaults(func=cmd_dataset_synth)
    p = dataset.add_parser("import-sheet", help="cut a sprite sheet into the dataset layout")
    p.add_argument("sheet")
    p.add_argument("out")
    p.add_argument("--category", required=True, help="vehicle, projectile or environment")
    p.add_argument("--kind", required=True, help="e.g. fighter, bullet, asteroid")
    p.add_argument("--id", default=None, help="entity id (default: derived from category and kind)")
    p.add_argument("--frame-size", type=_pair, default=None, help="frame size WxH in pixels")
    p.add_argument("--grid", type=_pair, default=None, help="columns x rows of the sheet")
    p.add_argument("--frames", type=int, default=None, help="use only the first N frames")
    p.add_argument("--directions", type=int, default=1, help="8 for a rotation sheet, else 1")
    p.add_argument("--first-direction", type=int, default=0, help="direction of frame 0 (0 = up)")
    p.add_argument("--counter-clockwise", action="store_true", help="frames rotate counter-clockwise")
    p.add_argument("--color-key", type=_color, default=None, help="background colour to make transparent: "
                   "auto (corner pixel), R,G,B or #RRGGBB")
    p.add_argument("--size", type=int, default=64, help="output sprite size")
    _add_colors_option(p)
    p.set_defaults(func=cmd_dataset_import_sheet)
    p = dataset.add_parser("fit", help="how well a base's VAE reproduces these sprites (the ceiling of a LoRA)")
    p.add_argument("dir")
    p.add_argument("--base", default="builtin:catsith-tiny", help="model.base to measure (default: the builtin)")
    p.add_argument("--png", default="vae_fit.png", help="side-by-side PNG of originals and reconstructions")
    p.add_argument("--limit", type=int, default=64, help="sprites measured, evenly spread over the dataset")
    p.add_argument("--cache-dir", default=None, help="cache root (default: $CATSITH_CACHE or the user cache)")
    p.set_defaults(func=cmd_dataset_fit)


def cmd_base_build(args: argparse.Namespace) -> int:
    from catsith_sweep.models.builtin import builtin_dir
    from catsith_sweep.trainers.base_build import build_base

    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    experiment = None
    if args.config:
        from catsith_sweep.config import load_experiment

        experiment = load_experiment(args.config, args.overrides).experiment
        if experiment.trainer != "full":
            raise UserInputError(f"{args.config}: base build needs trainer `full`, but got `{experiment.trainer}`")
    target = Path(args.out) if args.out else builtin_dir("catsith-tiny", cache_dir)
    if (target / "diffusers" / "model_index.json").is_file() and not args.force:
        out.print(f"{target} already holds a built base (use --force to rebuild)")
        return 0
    build_base(target, cache_dir=cache_dir, experiment=experiment, log=lambda m: out.print(escape(m)))
    out.print(f"sample grid: {target / 'samples' / 'samples.png'}")
    return 0


def _add_base_commands(sub: argparse._SubParsersAction) -> None:
    base = sub.add_parser("base", help="the builtin base model").add_subparsers(dest="base_cmd", required=True)
    p = base.add_parser("build", help="train builtin:catsith-tiny from scratch on the synth set and cache it")
    p.add_argument("--out", default=None, help="where to write it (default: the cache, where trials look)")
    p.add_argument("--cache-dir", default=None, help="cache root (default: $CATSITH_CACHE or the user cache)")
    p.add_argument("--config", default=None, help="a `full` experiment file instead of the builtin recipe")
    p.add_argument("--force", action="store_true", help="rebuild even if present")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides of --config")
    p.set_defaults(func=cmd_base_build)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catsith-sweep", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("validate", help="check an experiment file and its search space")
    p.add_argument("experiment")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("schema", help="print the JSON Schema of experiment files")
    p.set_defaults(func=cmd_schema)
    _add_dataset_commands(sub)
    _add_base_commands(sub)
    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Later layers (base, run, promote, registry, ...) register their subcommands here.
def _sweep_commands(sub: argparse._SubParsersAction) -> None:
    from catsith_sweep.sweep.commands import register

    register(sub)


_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_sweep_commands]
_EXTRA_COMMANDS.append(lambda sub: __import__("catsith_sweep.promote.commands").promote.commands.register(sub))
_EXTRA_COMMANDS.append(lambda sub: __import__("catsith_sweep.plan.command").plan.command.register(sub))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Library chatter (torchvision notices, loading bars) drowns our output; a user's own setting wins.
    for key, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                       ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")):
        os.environ.setdefault(key, value)
    try:
        return int(args.func(args))
    except UserInputError as exc:
        err.print(f"[red]error:[/red] {escape(exc.render())}")
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:  # a failure while running: say what, keep the traceback for debugging
        if os.environ.get("CATSITH_DEBUG"):
            traceback.print_exc()
        err.print(f"[red]failed:[/red] {escape(type(exc).__name__)}: {escape(str(exc))}")
        if not os.environ.get("CATSITH_DEBUG"):
            err.print("(set CATSITH_DEBUG=1 for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
