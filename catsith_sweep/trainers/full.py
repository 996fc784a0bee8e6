"""Full training of a base from scratch: the builtin `catsith-tiny` Stable-Diffusion-style model.

The budget (`train.max_steps`) runs in two phases: the first `full.vae_steps` steps train the RGBA
AutoencoderKL alone; the rest train the UNet and the text encoder on cached VAE latents. The export is
a diffusers folder: what `base build` caches and what LoRA trials load as `builtin:catsith-tiny`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from catsith_sweep.config.schema import Experiment, FullSection
from catsith_sweep.data.source import open_dataset
from catsith_sweep.models.builtin import DiffusionParts, build_untrained, save_parts
from catsith_sweep.models.vae_loss import augment_vae_batch, reconstruction_loss
from catsith_sweep.trainers import diffusion as D
from catsith_sweep.trainers.base import Evaluation
from catsith_sweep.trainers.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from catsith_sweep.trainers.sampling import default_prompts, evaluate_samples


class FullTrainer:
    """Builds catsith-tiny from scratch on a sprite dataset."""

    def __init__(self, experiment: Experiment, workdir: Path) -> None:
        self.exp = experiment
        self.cfg: FullSection = experiment.trainer_section  # type: ignore[assignment]
        self.workdir = workdir
        self.step = 0

    def setup(self) -> None:
        train = self.exp.train
        torch.set_num_threads(train.num_threads or max(1, int(self.exp.resources.cpu)))
        self.device = D.resolve_device(train.device)
        self.generator = seed_everything(train.seed)
        self.dataset = open_dataset(self.exp.data, self.exp.model.cache_dir, augment=False)
        self.images = self.dataset.images
        self.captions = list(self.dataset.captions)
        self.prompts = self.exp.eval.prompts or default_prompts(self.dataset)
        self.parts: DiffusionParts = build_untrained([*self.captions, *self.prompts])
        for module in (self.parts.vae, self.parts.unet, self.parts.text_encoder):
            module.to(self.device)
        self.vae_opt = torch.optim.AdamW(self.parts.vae.parameters(), lr=self.cfg.vae_learning_rate)
        self.vae_sched = torch.optim.lr_scheduler.LambdaLR(
            self.vae_opt, D.lr_lambda(self.cfg.vae_lr_scheduler, 0, self.cfg.vae_steps))
        params = [*self.parts.unet.parameters(), *self.parts.text_encoder.parameters()]
        self.opt = torch.optim.AdamW(params, lr=train.learning_rate, weight_decay=train.weight_decay)
        main_steps = max(1, self.total_steps() - self.cfg.vae_steps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, D.lr_lambda(train.lr_scheduler, train.lr_warmup_steps, main_steps))
        self.latent_cache: tuple[torch.Tensor, torch.Tensor] | None = None
        self.scale_fixed = False

    def total_steps(self) -> int:
        if self.exp.train.max_steps is not None:
            return self.exp.train.max_steps
        per_epoch = -(-len(self.captions) // self.exp.train.batch_size)
        return self.cfg.vae_steps + per_epoch * int(self.exp.train.epochs or 1)

    def _batch(self, size: int) -> torch.Tensor:
        return torch.randint(0, len(self.images), (size,), generator=self.generator)

    def _vae_step(self) -> dict[str, float]:
        vae = self.parts.vae
        vae.train()
        images = augment_vae_batch(self.images[self._batch(self.cfg.vae_batch_size)], self.generator,
                                   recolour_share=self.cfg.vae_recolour, turns=self.cfg.vae_turns)
        pixels = D.to_vae_pixels(images, self.parts.rgba).to(self.device)
        posterior = vae.encode(pixels).latent_dist
        recon = vae.decode(posterior.sample(generator=None)).sample
        rec = reconstruction_loss(self.cfg.vae_loss, recon, pixels)
        kl = posterior.kl().mean()
        loss = rec + self.cfg.vae_kl_weight * kl
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.vae_opt.step()
        self.vae_sched.step()
        return {f"vae_recon_{self.cfg.vae_loss}": rec.item(), "vae_kl": kl.item()}

    def _cache_latents(self) -> None:
        """Freeze the VAE, set its scaling factor so latents have unit variance (as SD's 0.18215 does
        for its VAE), and keep every sprite's latent mean and std."""
        vae = self.parts.vae.eval().requires_grad_(False)
        with torch.no_grad():
            pixels = D.to_vae_pixels(self.images, self.parts.rgba).to(self.device)
            dist = vae.encode(pixels).latent_dist
        if not self.scale_fixed:
            vae.register_to_config(scaling_factor=float(1.0 / dist.mean.std()))
            self.scale_fixed = True
        scale = vae.config.scaling_factor
        self.latent_cache = (dist.mean * scale, dist.std * scale)

    def _unet_step(self) -> dict[str, float]:
        if self.latent_cache is None:
            self._cache_latents()
        assert self.latent_cache is not None
        self.parts.unet.train()
        self.parts.text_encoder.train()
        idx = self._batch(self.exp.train.batch_size)
        mean, std = self.latent_cache
        noise = torch.randn(mean[idx].shape, generator=self.generator).to(self.device)
        latents = mean[idx] + std[idx] * noise
        drop = torch.rand(len(idx), generator=self.generator) < self.cfg.caption_dropout_rate
        captions = ["" if d else self.captions[i] for i, d in zip(idx.tolist(), drop.tolist(), strict=True)]
        embeddings = self.parts.text_encoder(D.tokenize(self.parts, captions, self.device))[0]
        loss = D.diffusion_loss(self.parts.unet, self.parts.scheduler, latents, embeddings,
                                noise_offset=self.cfg.noise_offset, generator=self.generator)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.exp.train.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]],
                                           self.exp.train.max_grad_norm)
        self.opt.step()
        self.sched.step()
        return {"loss": loss.item(), "lr": float(self.sched.get_last_lr()[0])}

    def train(self, steps: int, log: Any) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for _ in range(steps):
            metrics = self._vae_step() if self.step < self.cfg.vae_steps else self._unet_step()
            if not all(torch.isfinite(torch.tensor(v)) for v in metrics.values()):
                raise FloatingPointError(f"non-finite training metrics at step {self.step}: {metrics}")
            self.step += 1
            log(self.step, metrics)
        return metrics

    def evaluate(self, out_dir: Path) -> Evaluation:
        if self.step <= self.cfg.vae_steps:  # only the VAE exists yet: show reconstructions
            return Evaluation(self.step, {})
        self.parts.unet.eval()
        self.parts.text_encoder.eval()
        return evaluate_samples(self.parts, self.dataset, self.exp, out_dir, self.prompts, self.step,
                                self.device)

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"vae": self.parts.vae, "unet": self.parts.unet, "text_encoder": self.parts.text_encoder}

    def save(self, directory: Path) -> None:
        save_checkpoint(directory, modules=self._modules(), optimizers={"vae": self.vae_opt, "main": self.opt},
                        schedulers={"main": self.sched, "vae": self.vae_sched}, generator=self.generator,
                        step=self.step,
                        extra={"scaling_factor": float(self.parts.vae.config.scaling_factor)})
        self.parts.tokenizer.save_pretrained(directory / "tokenizer")

    def restore(self, directory: Path) -> None:
        from transformers import CLIPTokenizer

        self.parts.tokenizer = CLIPTokenizer.from_pretrained(directory / "tokenizer")
        meta = load_checkpoint(directory, modules=self._modules(),
                               optimizers={"vae": self.vae_opt, "main": self.opt},
                               schedulers={"main": self.sched, "vae": self.vae_sched}, generator=self.generator)
        self.step = int(meta["step"])
        self.parts.vae.register_to_config(scaling_factor=meta["scaling_factor"])
        if self.step > self.cfg.vae_steps:
            self.scale_fixed = True
            self._cache_latents()

    def export(self, directory: Path) -> dict[str, Path]:
        save_parts(self.parts, directory / "diffusers")
        (directory / "diffusers" / "catsith_base.json").write_text(json.dumps(
            {"architecture": self.cfg.architecture, "steps": self.step, "dataset": str(self.dataset.root)}))
        return {"diffusers": directory / "diffusers"}
