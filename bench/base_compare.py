"""Compare built bases on the held-out designs of the set they were built on, at several eval seeds.

Each base is evaluated untuned, exactly as a sweep evaluates its baseline (`sweep.baseline.baseline_for`:
the LoRA trainer's `evaluate` with no adapter, `eval.noise_seeds` seeds): on the held-out 15% of the
synth seed-0 `16bit` set (`data.split_seed` 0, the split `base build` holds out), prompted with the
captions of the rule the base was built with. Prints each metric's mean and spread over seeds, and the
difference between the first two bases in units of their pooled spread.

    PYTHONPATH=$PWD .venv/bin/python bench/base_compare.py \\
        guide=~/.cache/catsith_sweep/bases/catsith-tiny-v3/diffusers:guide \\
        measured=runs/base-measured/diffusers:measured --seeds 4

Used to choose the builtin's caption rule (issue 11: "build the base with whichever gives the better
held-out metrics"). Baselines are cached per setup, so a rerun with the same bases is instant.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "lora_style.yaml"
SHOWN = ("sprite_fid", "sprite_kid", "sprite_lpips", "palette_distance", "kind_accuracy", "direction_accuracy")
LOWER_IS_BETTER = {"sprite_fid", "sprite_kid", "sprite_lpips", "palette_distance"}


def parse_base(text: str) -> tuple[str, str, str]:
    """LABEL=PATH:RULE -> (label, path, rule)."""
    label, sep, rest = text.partition("=")
    path, colon, rule = rest.rpartition(":")
    if not sep or not colon or rule not in ("guide", "measured"):
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH:guide or LABEL=PATH:measured, but got {text!r}")
    return label, str(Path(path).expanduser()), rule


def evaluate(path: str, rule: str, seeds: int, workdir: Path) -> list[dict[str, float]]:
    from catsith_sweep.config.loader import load_experiment
    from catsith_sweep.data.fingerprint import fingerprint
    from catsith_sweep.sweep.baseline import baseline_for
    from catsith_sweep.trainers import prepare

    overrides = [f"model.base={path}", "data.synth_seed=0", "data.synth_style=16bit", "data.val_fraction=0.15",
                 "data.split_seed=0", f"data.caption_colors={rule}", f"eval.noise_seeds={seeds}"]
    experiment = load_experiment(EXPERIMENT, overrides).experiment
    dataset = prepare(experiment, log=lambda message: None)
    baseline = baseline_for(experiment, workdir, dataset_fingerprint=fingerprint(dataset),
                            code_version="bench-base-compare")
    print(f"  {path} ({rule}): {baseline.describe()}", flush=True)
    return baseline.per_seed


def summary(per_seed: list[dict[str, float]], name: str) -> tuple[float, float]:
    values = [m[name] for m in per_seed if name in m and math.isfinite(m[name])]
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("bases", nargs="+", type=parse_base, help="LABEL=PATH:RULE (RULE: guide or measured)")
    parser.add_argument("--seeds", type=int, default=4, help="eval seeds per base (default 4)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="catsith_base_compare_") as tmp:
        for label, path, rule in args.bases:
            results[label] = evaluate(path, rule, args.seeds, Path(tmp) / label)
    labels = list(results)
    print(f"\nheld-out (synth seed 0, 16bit, 15%), mean +- sd over {args.seeds} eval seeds")
    print(f"{'metric':20}" + "".join(f"{label:>22}" for label in labels)
          + ("   difference / pooled sd" if len(labels) > 1 else ""))
    for name in SHOWN:
        stats = [summary(results[label], name) for label in labels]
        row = f"{name:20}" + "".join(f"{m:>14.4g} +- {s:<5.2g}" for m, s in stats)
        if len(stats) > 1:
            (m0, s0), (m1, s1) = stats[0], stats[1]
            pooled = math.sqrt((s0 ** 2 + s1 ** 2) / 2) or float("nan")
            better = labels[1] if (m1 < m0) == (name in LOWER_IS_BETTER) else labels[0]
            row += f"   {(m1 - m0) / pooled:+.2f} ({better} better)"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
