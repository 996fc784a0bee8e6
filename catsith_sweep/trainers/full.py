"""Full training of a base from scratch: the builtin `catsith-tiny` Stable-Diffusion-style model.

The budget (`train.max_steps`, or `full.vae_steps` plus `train.epochs` passes) runs in two phases:
the first `full.vae_steps` steps train the RGBA AutoencoderKL alone; the rest train the UNet and the
text encoder on cached VAE latents. Both phases accumulate `train.gradient_accumulation_steps`
micro-batches per step and run under `train.mixed_precision` (on CUDA); `train.gradient_checkpointing`
applies to all three models; clipping (`train.max_grad_norm`) to the second phase. The export (format
`diffusers`) is a diffusers folder: what `base build` caches and what LoRA trials load as
`builtin:catsith-tiny`. Both phases train on the training side of the held-out split only (the
VAE, the latent cache and the UNet's captions); evaluations score the held-out side
(`trainers.heldout`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch

from catsith_sweep.config.schema import Experiment, FullSection
from catsith_sweep.data.source import open_dataset
from catsith_sweep.models.builtin import DiffusionParts, build_untrained, save_parts
from catsith_sweep.models.vae_loss import augment_vae_batch, reconstruction_loss
from catsith_sweep.trainers import diffusion as D
from catsith_sweep.trainers.base import Evaluation
from catsith_sweep.trainers.checkpoint import load_checkpoint, save_checkpoint
from catsith_sweep.trainers.heldout import experiment_split, random_batches_per_epoch, split_params
from catsith_sweep.trainers.runtime import autocast, backward, check_finite, optimizer_step, start_runtime
from catsith_sweep.trainers.sampling import default_prompts, evaluate_samples
from catsith_sweep.trainers.surface import FULL, TrainerSurface, budget_steps


class FullTrainer:
    """Builds catsith-tiny from scratch on a sprite dataset."""

    surface: ClassVar[TrainerSurface] = FULL

    def __init__(self, experiment: Experiment, workdir: Path) -> None:
        self.exp = experiment
        self.cfg = experiment.trainer_config(FullSection)
        self.workdir = workdir
        self.step = 0

    def setup(self) -> None:
        train = self.exp.train
        self.surface.formats(self.exp)  # refused now, not after the whole budget
        self.rt = start_runtime(self.exp)
        self.dataset = open_dataset(self.exp.data, self.exp.model.cache_dir, augment=False)
        self.split = experiment_split(self.exp, self.dataset)  # refused now when too small to measure
        # What training sees: the training split's sprites and captions, nothing held out.
        self.images = self.dataset.images[self.split.train]
        self.captions = [self.dataset.captions[i] for i in self.split.train]
        self.prompts = self.exp.eval.prompts or default_prompts(self.dataset)
        # The tokenizer's vocabulary covers every caption (held-out ones are prompts at evaluation).
        self.parts: DiffusionParts = build_untrained([*self.dataset.captions, *self.prompts])
        for module in (self.parts.vae, self.parts.unet, self.parts.text_encoder):
            module.to(self.rt.device)
        if train.gradient_checkpointing:
            self.parts.vae.enable_gradient_checkpointing()
            self.parts.unet.enable_gradient_checkpointing()
            text_encoder = self.parts.text_encoder  # transformers 5 renamed it; 4.x has the old name only
            enable = getattr(text_encoder, "activation_checkpointing_enable", None)
            (enable or text_encoder.gradient_checkpointing_enable)({"use_reentrant": False})
        self.vae_opt = torch.optim.AdamW(self.parts.vae.parameters(), lr=self.cfg.vae_learning_rate)
        self.vae_sched = torch.optim.lr_scheduler.LambdaLR(
            self.vae_opt, D.lr_lambda(self.cfg.vae_lr_scheduler, 0, self.cfg.vae_steps))
        self.params = [*self.parts.unet.parameters(), *self.parts.text_encoder.parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=train.learning_rate, weight_decay=train.weight_decay)
        main_steps = max(1, self.total_steps() - self.cfg.vae_steps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, D.lr_lambda(train.lr_scheduler, train.lr_warmup_steps, main_steps))
        self.latent_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.scale_fixed = False

    @staticmethod
    def batches_per_epoch(experiment: Experiment, dataset: Any) -> int:
        """UNet micro-batches in one pass over the training split (drawn at random, with replacement)."""
        return random_batches_per_epoch(experiment, dataset)

    def total_steps(self) -> int:
        return budget_steps(self.exp, lambda: self.batches_per_epoch(self.exp, self.dataset))

    def run_params(self) -> dict[str, str]:
        return {**split_params(self.split), **D.caption_overflow_params(self.parts.tokenizer, self.dataset.captions)}

    def _batch(self, size: int) -> torch.Tensor:
        return torch.randint(0, len(self.images), (size,), generator=self.rt.generator)

    def _vae_loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        vae = self.parts.vae
        images = augment_vae_batch(self.images[self._batch(self.cfg.vae_batch_size)], self.rt.generator,
                                   recolour_share=self.cfg.vae_recolour, turns=self.cfg.vae_turns)
        pixels = D.to_vae_pixels(images, self.parts.rgba).to(self.rt.device)
        with autocast(self.rt):
            posterior = vae.encode(pixels).latent_dist
            recon = vae.decode(posterior.sample(generator=None)).sample
        rec = reconstruction_loss(self.cfg.vae_loss, recon.float(), pixels, chroma_weight=self.cfg.vae_chroma_weight,
                                  alpha_weight=self.cfg.vae_alpha_weight)
        kl = posterior.kl().float().mean()
        return rec + self.cfg.vae_kl_weight * kl, {"vae_recon": rec.item(), "vae_kl": kl.item()}

    def _cache_latents(self) -> None:
        """Freeze the VAE, set its scaling factor so latents have unit variance (as SD's 0.18215 does
        for its VAE), and keep every sprite's latent mean and std."""
        vae = self.parts.vae.eval().requires_grad_(False)
        with torch.no_grad():
            pixels = D.to_vae_pixels(self.images, self.parts.rgba).to(self.rt.device)
            dist = vae.encode(pixels).latent_dist
        if not self.scale_fixed:
            vae.register_to_config(scaling_factor=float(1.0 / dist.mean.std()))
            self.scale_fixed = True
        scale = vae.config.scaling_factor
        self.latent_cache = (dist.mean * scale, dist.std * scale)

    def _unet_loss(self) -> tuple[torch.Tensor, dict[str, float]]:
        assert self.latent_cache is not None
        idx = self._batch(self.exp.train.batch_size)
        mean, std = self.latent_cache
        noise = torch.randn(mean[idx].shape, generator=self.rt.generator).to(self.rt.device)
        latents = mean[idx] + std[idx] * noise
        drop = torch.rand(len(idx), generator=self.rt.generator) < self.cfg.caption_dropout_rate
        captions = ["" if d else self.captions[i] for i, d in zip(idx.tolist(), drop.tolist(), strict=True)]
        with autocast(self.rt):
            embeddings = self.parts.text_encoder(D.tokenize(self.parts, captions, self.rt.device))[0]
            loss = D.diffusion_loss(self.parts.unet, self.parts.scheduler, latents, embeddings,
                                    noise_offset=self.cfg.noise_offset, generator=self.rt.generator)
        return loss, {"loss": loss.item()}

    def train(self, steps: int, log: Any) -> dict[str, float]:
        accum = self.exp.train.gradient_accumulation_steps
        metrics: dict[str, float] = {}
        for _ in range(steps):
            vae_phase = self.step < self.cfg.vae_steps
            if vae_phase:
                self.parts.vae.train()
            else:
                if self.latent_cache is None:
                    self._cache_latents()
                self.parts.unet.train()
                self.parts.text_encoder.train()
            sums: dict[str, float] = {}
            for _ in range(accum):
                loss, parts = self._vae_loss() if vae_phase else self._unet_loss()
                check_finite(loss, self.step, parts)
                backward(self.rt, loss, accum)
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0.0) + value / accum
            if vae_phase:  # no clipping: the VAE phase's recipe
                optimizer_step(self.rt, self.vae_opt, self.parts.vae.parameters(), max_grad_norm=None,
                               scheduler=self.vae_sched)
                metrics = sums
            else:
                optimizer_step(self.rt, self.opt, self.params, max_grad_norm=self.exp.train.max_grad_norm,
                               scheduler=self.sched)
                metrics = {**sums, "lr": float(self.sched.get_last_lr()[0])}
            self.step += 1
            log(self.step, metrics)
        return metrics

    def evaluate(self, out_dir: Path) -> Evaluation:
        if self.step <= self.cfg.vae_steps:  # only the VAE exists yet: show reconstructions
            return Evaluation(self.step, {})
        self.parts.unet.eval()
        self.parts.text_encoder.eval()
        return evaluate_samples(self.parts, self.dataset, self.exp, out_dir, self.prompts, self.step,
                                self.rt.device, split=self.split)

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"vae": self.parts.vae, "unet": self.parts.unet, "text_encoder": self.parts.text_encoder}

    def save(self, directory: Path) -> None:
        save_checkpoint(directory, modules=self._modules(), optimizers={"vae": self.vae_opt, "main": self.opt},
                        schedulers={"main": self.sched, "vae": self.vae_sched}, generator=self.rt.generator,
                        step=self.step, extra={"scaling_factor": float(self.parts.vae.config.scaling_factor)},
                        scaler=self.rt.scaler)
        self.parts.tokenizer.save_pretrained(directory / "tokenizer")

    def restore(self, directory: Path) -> None:
        from transformers import CLIPTokenizer

        self.parts.tokenizer = CLIPTokenizer.from_pretrained(directory / "tokenizer")
        meta = load_checkpoint(directory, modules=self._modules(),
                               optimizers={"vae": self.vae_opt, "main": self.opt},
                               schedulers={"main": self.sched, "vae": self.vae_sched}, generator=self.rt.generator,
                               scaler=self.rt.scaler)
        self.step = int(meta["step"])
        self.parts.vae.register_to_config(scaling_factor=meta["scaling_factor"])
        if self.step > self.cfg.vae_steps:
            self.scale_fixed = True
            self._cache_latents()

    def export(self, directory: Path) -> dict[str, Path]:
        save_parts(self.parts, directory / "diffusers")
        (directory / "diffusers" / "catsith_base.json").write_text(json.dumps(
            {"architecture": self.cfg.architecture, "steps": self.step, "dataset": str(self.dataset.root),
             **self.split.params()}))
        return {"diffusers": directory / "diffusers"}
