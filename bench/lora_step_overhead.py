"""LoRA trainer step rate against a bare hand-written torch loop, side by side in one process.

Both loops train the same PEFT adapter (same rank, alpha, targets and initial weights) on the same tiny
base, from the same cached VAE latents and caption embeddings (the trainer's own cache), with AdamW and
the epsilon-prediction MSE at random timesteps, at the same batch size. The trainer runs with the
options that add work off (no clipping, constant LR, no caption dropout / noise offset / Min-SNR), so
the difference is the trainer's own per-step overhead. Repetitions alternate (trainer, bare, trainer,
...) after a warm-up of each, and medians are reported, so load from other processes hits both alike.

    .venv/bin/python bench/lora_step_overhead.py                  # ~1-2 min on a 2-core CPU
    .venv/bin/python bench/lora_step_overhead.py --reps 15 --steps 20 --batch-size 32

The base: `builtin:catsith-tiny` from CATSITH_CACHE when it is already built there, else (or with
--build) a tiny base trained for 40 steps in a child process (its memory is not counted), cached under
the system temp dir for the next run.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_BASE = {
    "name": "bench-base", "trainer": "full", "data": {"synth_variants": 1},
    "train": {"max_steps": 40, "batch_size": 8, "learning_rate": 1e-3, "num_threads": 1, "device": "cpu"},
    "full": {"vae_steps": 20, "vae_batch_size": 8},
    "eval": {"every_n_steps": 40, "num_metric_samples": 8, "num_inference_steps": 2, "seeds": [0]},
}


def _build_tiny_base(target: str, cache: str) -> None:
    os.environ["CATSITH_CACHE"] = cache
    from catsith_sweep.config.schema import Experiment
    from catsith_sweep.trainers.base_build import build_base

    config = {**TINY_BASE, "model": {"cache_dir": cache}}
    build_base(Path(target), experiment=Experiment.model_validate(config), log=lambda _: None)


def find_base(force_build: bool) -> tuple[str, Path]:
    """(model.base, cache dir): the cached builtin base if present, else a tiny one built here."""
    from catsith_sweep.models.base_source import builtin_ready
    from catsith_sweep.models.builtin import default_cache_dir

    if not force_build and os.environ.get("CATSITH_CACHE") and builtin_ready("builtin:catsith-tiny", None):
        return "builtin:catsith-tiny", default_cache_dir()
    root = Path(tempfile.gettempdir()) / "catsith_bench"
    cache, target = root / "cache", root / "tiny_base"
    if not (target / "diffusers" / "model_index.json").is_file():
        print(f"building a tiny base in {target} (about 20 s) ...", flush=True)
        process = multiprocessing.get_context("spawn").Process(target=_build_tiny_base, args=(str(target), str(cache)))
        process.start()
        process.join()
        if process.exitcode != 0:
            sys.exit(f"building the tiny base failed (exit {process.exitcode})")
    return str(target / "diffusers"), cache


class BareLoop:
    """The hand-written reference: what a LoRA step is, with nothing around it."""

    def __init__(self, trainer: Any, lr: float, batch_size: int, seed: int) -> None:
        import torch
        from peft import LoraConfig

        from catsith_sweep.models.base_source import load_base

        exp = trainer.exp
        parts = load_base(exp.model.base, exp.model.cache_dir)
        self.unet = parts.unet.requires_grad_(False).to(trainer.rt.device)
        self.unet.add_adapter(LoraConfig(r=exp.lora.rank, lora_alpha=exp.lora.alpha,
                                         target_modules=list(exp.lora.target_modules), init_lora_weights="gaussian"))
        adapter = {k: v for k, v in trainer.parts.unet.state_dict().items() if ".lora_" in k}
        missing = set(adapter) - set(self.unet.state_dict())
        assert not missing, f"adapters differ: {sorted(missing)[:3]}"
        self.unet.load_state_dict(copy.deepcopy(adapter), strict=False)
        self.unet.train()
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        assert len(self.params) == len(trainer.params)
        self.opt = torch.optim.AdamW(self.params, lr=lr)
        self.scheduler = copy.deepcopy(trainer.parts.scheduler)
        self.mean, self.std, self.emb = trainer.cache["mean"], trainer.cache["std"], trainer.cache["emb"]
        self.batch_size = batch_size
        self.device = trainer.rt.device
        self.generator = torch.Generator().manual_seed(seed)

    def train(self, steps: int) -> float:
        import torch
        import torch.nn.functional as F

        loss = torch.zeros(())
        for _ in range(steps):
            idx = torch.randint(0, len(self.mean), (self.batch_size,), generator=self.generator)
            sample = torch.randn(self.mean[idx].shape, generator=self.generator).to(self.device)
            latents = self.mean[idx] + self.std[idx] * sample
            noise = torch.randn(latents.shape, generator=self.generator).to(self.device)
            timesteps = torch.randint(0, 1000, (self.batch_size,), generator=self.generator).to(self.device)
            noisy = self.scheduler.add_noise(latents, noise, timesteps)
            prediction = self.unet(noisy, timesteps, self.emb[idx]).sample
            loss = F.mse_loss(prediction, noise)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return loss.item()


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15, help="optimizer steps per timed repetition")
    parser.add_argument("--reps", type=int, default=11, help="timed repetitions of each loop (alternating)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a trial's default share)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--build", action="store_true", help="use a freshly built tiny base, not the cached builtin")
    args = parser.parse_args()

    base, cache = find_base(args.build)
    os.environ["CATSITH_CACHE"] = str(cache)

    import torch

    from catsith_sweep.config.schema import Experiment
    from catsith_sweep.trainers.lora import LoraTrainer

    torch.set_num_threads(args.threads)
    lr = 1e-4
    exp = Experiment.model_validate({
        "name": "bench-lora", "trainer": "lora",
        "model": {"base": base, "cache_dir": str(cache)},
        "data": {"synth_variants": 1},
        "train": {"max_steps": 10_000, "batch_size": args.batch_size, "learning_rate": lr, "max_grad_norm": None,
                  "lr_scheduler": "constant", "num_threads": args.threads, "device": args.device},
        "lora": {"rank": args.rank, "alpha": float(args.rank)},
    })
    with tempfile.TemporaryDirectory() as workdir:
        trainer = LoraTrainer(exp, Path(workdir))
        trainer.setup()
        assert trainer.cache is not None, "the trainer must train from cached latents here"
        bare = BareLoop(trainer, lr, args.batch_size, seed=1)
        cuda = trainer.rt.device.type == "cuda"

        def timed(run: Any) -> float:
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if cuda:
                torch.cuda.synchronize()
            return args.steps / (time.perf_counter() - start)

        def noop(step: int, metrics: dict[str, float]) -> None:
            pass

        loops = {"trainer": lambda: trainer.train(args.steps, noop), "bare": lambda: bare.train(args.steps)}
        rss_setup = max_rss_mib()
        for run in loops.values():  # warm-up: allocator, autograd graph caches, first-touch pages
            timed(run)
        rates: dict[str, list[float]] = {name: [] for name in loops}
        peak_cuda: dict[str, int] = {}
        for rep in range(args.reps):
            order = list(loops) if rep % 2 == 0 else list(reversed(loops))
            for name in order:
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                rates[name].append(timed(loops[name]))
                if cuda:
                    peak_cuda[name] = max(peak_cuda.get(name, 0), torch.cuda.max_memory_allocated())
        rss_end = max_rss_mib()

    med = {name: statistics.median(values) for name, values in rates.items()}
    # Extra time per step relative to the bare loop, paired within each repetition (robust to load drifting
    # between repetitions), and from the medians.
    paired = statistics.median(b / t - 1 for t, b in zip(rates["trainer"], rates["bare"], strict=True))
    overhead = med["bare"] / med["trainer"] - 1
    print(f"device {trainer.rt.device}, torch threads {torch.get_num_threads()}, base {base}")
    print(f"batch {args.batch_size}, LoRA rank {args.rank}, {len(trainer.params)} adapter tensors "
          f"({sum(p.numel() for p in trainer.params)} weights), {args.reps} x {args.steps} steps per loop")
    for name in loops:
        shown = " ".join(f"{r:.2f}" for r in rates[name])
        print(f"{name:8s} median {med[name]:6.2f} steps/s  {med[name] * args.batch_size:7.1f} images/s   [{shown}]")
    print(f"trainer overhead: {paired * 100:+.1f}% per step, median of paired repetitions "
          f"({overhead * 100:+.1f}% from the medians; target < 5%)")
    print(f"peak memory (max RSS): {rss_setup:.0f} MiB after setup, {rss_end:.0f} MiB after training")
    for name, peak in peak_cuda.items():
        print(f"peak CUDA memory {name}: {peak / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
