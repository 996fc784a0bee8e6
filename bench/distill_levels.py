"""Distillation levels on the builtin base's architecture: UNet parameters and the latency ratio of the
whole sampling loop (text encode, guided UNet steps, VAE decode), student / teacher, timed interleaved in
one process (`trainers.latency.measure_latency`). Weights are random: latency does not depend on them.

    python bench/distill_levels.py [--steps 15] [--repeats 7]
"""

from __future__ import annotations

import argparse

import torch

from catsith_sweep.models.builtin import build_untrained
from catsith_sweep.models.student import LEVELS, build_student, count_params
from catsith_sweep.trainers.latency import measure_latency

PROMPTS = ["a red fighter ship facing up", "a grey asteroid"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = build_untrained(PROMPTS)
    print(f"{'level':8s} {'UNet params':>12s} {'latency ratio':>14s}  removed")
    print(f"{'teacher':8s} {count_params(teacher.unet):12,d} {1.0:14.2f}")
    for level in LEVELS:
        student = build_untrained(PROMPTS)
        student.unet, plan = build_student(teacher.unet, level)
        student.text_encoder, student.vae, student.tokenizer = teacher.text_encoder, teacher.vae, teacher.tokenizer
        found = measure_latency(teacher, student, prompt=PROMPTS[0], steps=args.steps, guidance_scale=4.0,
                                resolution=64, device=torch.device("cpu"), repeats=args.repeats)
        print(f"{level:8s} {count_params(student.unet):12,d} {found['latency_ratio']:14.2f}  "
              + "; ".join(plan.removed))


if __name__ == "__main__":
    main()
