"""Probe the builtin base's VAE stage alone: the full trainer's VAE phase with a given schedule and
learning rate, measured with `vae_roundtrip`'s sets at chosen steps (no UNet phase, no base written).

    PYTHONPATH=$PWD .venv/bin/python bench/vae_stage_probe.py NAME SCHEDULE STEPS LR [--threads 2] \\
        [--marks 300,600,900,1200] [--out /tmp/vae_probe]

SCHEDULE is `full.vae_lr_scheduler` (constant, cosine, cosine_restarts). Prints one line per mark:
own-train / own-heldout / handheld / rendered-sheet colour/alpha errors (/255), then writes a side-by-side
PNG and the VAE's weights (safetensors) under --out. Uses the builtin recipe otherwise
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name")
    parser.add_argument("schedule", choices=["constant", "cosine", "cosine_restarts"])
    parser.add_argument("steps", type=int)
    parser.add_argument("lr", type=float)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--marks", default="", help="steps to measure at, e.g. 300,600 (default: the end)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vae_probe"))
    args = parser.parse_args()

    import vae_roundtrip as roundtrip
    from safetensors.torch import save_file

    from catsith_sweep.config.schema import Experiment
    from catsith_sweep.trainers.base_build import BUILTIN_BASE_CONFIG
    from catsith_sweep.trainers.full import FullTrainer

    config = json.loads(json.dumps(BUILTIN_BASE_CONFIG))
    config["train"].update(max_steps=args.steps + 1, num_threads=args.threads)
    config["full"].update(vae_steps=args.steps, vae_learning_rate=args.lr, vae_lr_scheduler=args.schedule)
    trainer = FullTrainer(Experiment.model_validate(config), args.out / args.name)
    trainer.setup()
    sets = roundtrip.eval_sets(args.out / "sets")
    marks = [int(m) for m in args.marks.split(",") if m] or [args.steps]
    started, done = time.time(), 0
    for mark in marks:
        trainer.train(mark - done, lambda step, metrics: None)
        done = mark
        results = roundtrip.measure(trainer.parts.vae, sets)
        trainer.parts.vae.train()
        errors = " ".join(f"{k}={v['rgb']:.1f}/{v['alpha']:.1f}" for k, v in results.items())
        print(f"{args.name} step {mark} ({time.time() - started:.0f} s): {errors}", flush=True)
    vae = trainer.parts.vae.eval()
    roundtrip.side_by_side(sets, vae, args.out / f"{args.name}.png")
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(args.out / f"{args.name}.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
