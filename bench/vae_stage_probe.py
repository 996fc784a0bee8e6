"""Probe the builtin base's VAE stage alone: the full trainer's VAE phase with a given schedule and
learning rate, measured with `vae_roundtrip`'s sets at chosen steps (no UNet phase, no base written).

    PYTHONPATH=$PWD .venv/bin/python bench/vae_stage_probe.py NAME SCHEDULE STEPS LR [--threads 2] \\
        [--marks 300,600,900,1200] [--out /tmp/vae_probe] [--vae latent_channels=8 ...] [--full vae_recolour=0.8 ...]

SCHEDULE is `full.vae_lr_scheduler` (constant, cosine, cosine_restarts). Prints one line per mark:
own-train / own-heldout / handheld / rendered-sheet colour/alpha errors (/255), then writes a side-by-side
PNG and the VAE's weights (safetensors) under --out. `--vae KEY=VALUE` changes the builtin VAE's
architecture for the probe (`models.builtin.VAE_CONFIG`, JSON values; `latent_channels` also sets the
UNet's), `--full KEY=VALUE` the `full:` section (e.g. `vae_loss`, `vae_recolour`). Uses the builtin recipe otherwise
(`trainers/base_build.BUILTIN_BASE_CONFIG`), on the training side of its split. Session 3 ran
`restarts cosine_restarts 1200 2e-3 --marks 300,600,900` (own-heldout 37.5 / 34.4 / 31.8).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


def parse_pairs(pairs: list[str]) -> dict[str, object]:
    return {key: json.loads(value) for key, value in (pair.split("=", 1) for pair in pairs)}


def hue_square_error(vae: object) -> float:
    """Mean colour error (/255) of flat squares of 12 saturated hues: a VAE that has lost a colour axis
    (session 3's v2 decoded red as orange-brown and green as grey) fails here first."""
    import colorsys

    import torch
    import vae_roundtrip as roundtrip

    images = torch.zeros(12, 4, 64, 64)
    for index in range(12):
        images[index, :3, 16:48, 16:48] = torch.tensor(colorsys.hsv_to_rgb(index / 12, 0.8, 0.85))[:, None, None]
        images[index, 3, 16:48, 16:48] = 1
    return roundtrip.roundtrip_errors(images, roundtrip.roundtrip(vae, images))["rgb"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name")
    parser.add_argument("schedule", choices=["constant", "cosine", "cosine_restarts"])
    parser.add_argument("steps", type=int)
    parser.add_argument("lr", type=float)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--marks", default="", help="steps to measure at, e.g. 300,600 (default: the end)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vae_probe"))
    parser.add_argument("--vae", nargs="*", default=[], help="VAE_CONFIG overrides, KEY=JSON")
    parser.add_argument("--logvar-init", type=float, default=None,
                        help="start the encoder's log-variance output at this value (bias of its last conv)")
    parser.add_argument("--full", nargs="*", default=[], help="full: section overrides, KEY=JSON")
    args = parser.parse_args()

    import vae_roundtrip as roundtrip
    from safetensors.torch import save_file

    from catsith_sweep.config.schema import Experiment
    from catsith_sweep.models import builtin
    from catsith_sweep.trainers.base_build import BUILTIN_BASE_CONFIG
    from catsith_sweep.trainers.full import FullTrainer

    config = json.loads(json.dumps(BUILTIN_BASE_CONFIG))
    config["train"].update(max_steps=args.steps + 1, num_threads=args.threads)
    config["full"].update(vae_steps=args.steps, vae_learning_rate=args.lr, vae_lr_scheduler=args.schedule)
    config["full"].update(parse_pairs(args.full))
    builtin.VAE_CONFIG.update(parse_pairs(args.vae))
    channels = builtin.VAE_CONFIG["latent_channels"]
    builtin.UNET_CONFIG.update(in_channels=channels, out_channels=channels)
    trainer = FullTrainer(Experiment.model_validate(config), args.out / args.name)
    trainer.setup()
    if args.logvar_init is not None:
        import torch

        with torch.no_grad():
            conv_out = trainer.parts.vae.encoder.conv_out
            conv_out.bias[channels:] = args.logvar_init
            conv_out.weight[channels:] *= 0.01
    sets = roundtrip.eval_sets(args.out / "sets")
    marks = [int(m) for m in args.marks.split(",") if m] or [args.steps]
    started, done = time.time(), 0
    for mark in marks:
        trainer.train(mark - done, lambda step, metrics: None)
        done = mark
        results = roundtrip.measure(trainer.parts.vae, sets)
        trainer.parts.vae.train()
        errors = " ".join(f"{k}={v['rgb']:.1f}/{v['alpha']:.1f}" for k, v in results.items())
        errors += f" hues={hue_square_error(trainer.parts.vae):.1f}"
        print(f"{args.name} step {mark} ({time.time() - started:.0f} s): {errors}", flush=True)
    vae = trainer.parts.vae.eval()
    roundtrip.side_by_side(sets, vae, args.out / f"{args.name}.png")
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(args.out / f"{args.name}.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
