"""Knowledge distillation (the guide's section of that name): a BK-SDM student of the teacher's UNet.

The teacher (`distill.teacher`, default `model.base`) is frozen; the student is its UNet with blocks
removed (`distill.level`, models/student.py), every weight copied from the teacher; the text encoder and
VAE are the teacher's, shared and frozen. Each step draws one noise and timestep for both models:

    loss = task_weight · MSE(ε_s, ε) + output_weight · MSE(ε_s, ε_t) + feature_weight · Σ MSE(f_s, f_t)
           + perceptual_weight · MSE(φ(decode(x̂0_s)), φ(decode(x̂0_t)))

(trainers/distill_loss.py; φ is the dataset's sprite feature network, never VGG). Each raw term is
logged (`loss_task`, ...); `distill.normalize_losses` divides each by its first value.

An evaluation scores the student pipeline (the teacher's tokenizer, text encoder, VAE and scheduler with
the student UNet) with the same sampling metrics as the LoRA trainer, and times it against the teacher:
`latency_ms`, `teacher_latency_ms` and their `latency_ratio` (trainers/latency.py), with `unet_params`
and `teacher_unet_params`. It trains on the training side of the held-out split and scores on the
held-out side (`trainers.heldout`), as every trainer does. Exports: the student pipeline as a diffusers
folder, and as the ONNX folder CatSith runs.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from catsith_sweep.config.schema import DistillSection, Experiment
from catsith_sweep.data.source import open_dataset
from catsith_sweep.errors import ModelSourceError
from catsith_sweep.io import atomic_write_text, replace_dir
from catsith_sweep.models.base_source import load_base
from catsith_sweep.models.student import build_student, count_params, feature_pairs
from catsith_sweep.trainers import diffusion as D
from catsith_sweep.trainers.base import Evaluation
from catsith_sweep.trainers.checkpoint import load_checkpoint, save_checkpoint
from catsith_sweep.trainers.distill_loss import (
    LossNormalizer,
    LossWeights,
    combine,
    feature_loss,
    predicted_x0,
    tap_blocks,
)
from catsith_sweep.trainers.heldout import experiment_split, random_batches_per_epoch, split_params
from catsith_sweep.trainers.latency import measure_latency
from catsith_sweep.trainers.runtime import autocast, backward, check_finite, optimizer_step, start_runtime
from catsith_sweep.trainers.sampling import default_prompts, evaluate_samples
from catsith_sweep.trainers.surface import DISTILL, TrainerSurface, budget_steps

STUDENT_FILE = "distill.json"


class DistillTrainer:
    """Distils the teacher's UNet into a smaller student; exports the student pipeline."""

    surface: ClassVar[TrainerSurface] = DISTILL

    def __init__(self, experiment: Experiment, workdir: Path) -> None:
        self.exp = experiment
        self.cfg = experiment.trainer_config(DistillSection)
        self.workdir = workdir
        self.step = 0
        self._net: Any = None

    @property
    def teacher_source(self) -> str:
        return self.cfg.teacher or self.exp.model.base

    # ---- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        train = self.exp.train
        self.formats = self.surface.formats(self.exp)  # refused now, not after the whole budget
        self.rt = start_runtime(self.exp)
        self.dataset = open_dataset(self.exp.data, self.exp.model.cache_dir)
        self.split = experiment_split(self.exp, self.dataset)  # refused now when too small to measure
        self.train_indices = self.split.train
        self.prompts = self.exp.eval.prompts or default_prompts(self.dataset)
        self.teacher = self._load_teacher()
        for module in (self.teacher.vae, self.teacher.text_encoder, self.teacher.unet):
            module.requires_grad_(False).eval().to(self.rt.device)
        unet, self.plan = build_student(self.teacher.unet, self.cfg.level)
        self.student = replace(self.teacher, unet=unet.requires_grad_(True))
        if train.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.pairs = feature_pairs(self.plan, len(unet.down_blocks), len(unet.up_blocks))
        self.weights = LossWeights(task=self.cfg.task_weight, output=self.cfg.output_weight,
                                   feature=self.cfg.feature_weight, perceptual=self.cfg.perceptual_weight)
        self.normalizer = LossNormalizer(enabled=self.cfg.normalize_losses)
        self.params = list(unet.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=train.learning_rate, weight_decay=train.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, D.lr_lambda(train.lr_scheduler, train.lr_warmup_steps, self.total_steps()))
        self.cache = self._build_cache() if self.exp.data.cache_latents and not self.dataset.has_augment else None

    def _load_teacher(self) -> Any:
        try:
            return load_base(self.teacher_source, self.exp.model.cache_dir, self.exp.model.revision)
        except ModelSourceError as exc:
            if self.cfg.teacher is None:
                raise
            # load_base speaks of `model.base`; here the value came from `distill.teacher`.
            raise ModelSourceError(str(exc).replace("model.base:", "distill.teacher:", 1)) from None

    def sprite_net(self) -> Any:
        """The dataset's sprite feature network (the perceptual term's φ), frozen; trained and cached on
        first use (one-time work of the dataset, which evaluation needs anyway), so loaded lazily."""
        if self._net is None:
            from catsith_sweep.trainers.sampling import sprite_net

            net = sprite_net(self.dataset, self.exp, train_indices=self.split.train)
            self._net = net.to(self.rt.device).eval().requires_grad_(False)
        return self._net

    def _embed(self, captions: list[str]) -> torch.Tensor:
        return D.embed(self.teacher, captions, self.rt.device)

    def _build_cache(self) -> dict[str, torch.Tensor]:
        """The training split's latents and captions, once (the VAE and text encoder are frozen); row i is
        `train_indices[i]`: held-out sprites are never trained on."""
        return D.build_latent_cache(self.teacher, self.dataset.images[self.train_indices],
                                    [self.dataset.captions[i] for i in self.train_indices], self.rt.device)

    @staticmethod
    def batches_per_epoch(experiment: Experiment, dataset: Any) -> int:
        """Micro-batches in one pass over the training split (batches are drawn at random, with
        replacement)."""
        return random_batches_per_epoch(experiment, dataset)

    def total_steps(self) -> int:
        return budget_steps(self.exp, lambda: self.batches_per_epoch(self.exp, self.dataset))

    def run_params(self) -> dict[str, str]:
        return {**split_params(self.split), **D.caption_overflow_params(self.teacher.tokenizer, self.dataset.captions)}

    # ---- training ----------------------------------------------------------------------------
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents and caption embeddings of one micro-batch (caption dropout applied)."""
        generator, device = self.rt.generator, self.rt.device
        pick = torch.randint(0, len(self.train_indices), (self.exp.train.batch_size,), generator=generator)
        idx = torch.tensor([self.train_indices[i] for i in pick.tolist()])
        drop = torch.rand(len(idx), generator=generator) < self.cfg.caption_dropout_rate
        if self.cache is not None:  # rows of the training split
            return D.cached_batch(self.cache, pick, drop, generator, device)
        items = [self.dataset[i] for i in idx.tolist()]
        vae = self.teacher.vae
        with torch.no_grad():
            pixels = D.to_vae_pixels(torch.stack([item["image"] for item in items]), self.teacher.rgba)
            latents = vae.encode(pixels.to(device, vae.dtype)).latent_dist.sample() * vae.config.scaling_factor
            emb = self._embed(["" if d else item["caption"] for item, d in zip(items, drop.tolist(), strict=True)])
        return latents, emb

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.teacher.vae
        return D.from_vae_pixels(vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample.float())

    def _perceptual(self, x0_student: torch.Tensor, x0_teacher: torch.Tensor) -> torch.Tensor:
        """Σ over the sprite net's trunk blocks of MSE between the features of the decoded x̂0s."""
        net = self.sprite_net()
        maps_s = net.feature_maps(net.prepare(self._decode(x0_student)))
        with torch.no_grad():
            maps_t = net.feature_maps(net.prepare(self._decode(x0_teacher)))
        return sum((F.mse_loss(s.float(), t.float()) for s, t in zip(maps_s, maps_t, strict=True)),
                   torch.zeros((), device=maps_s[0].device))

    def _terms(self, latents: torch.Tensor, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """The four raw loss terms of one micro-batch (one noise and timestep for both models)."""
        generator, device, scheduler = self.rt.generator, latents.device, self.teacher.scheduler
        noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator).to(device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        names_s, names_t = [s for s, _ in self.pairs], [t for _, t in self.pairs]
        with tap_blocks(self.student.unet, names_s, pairs=self.plan.student_lpb, detach=False) as f_s, \
                tap_blocks(self.teacher.unet, names_t, pairs=self.plan.teacher_lpb, detach=True) as f_t:
            eps_s = self.student.unet(noisy, timesteps, emb).sample
            with torch.no_grad():
                eps_t = self.teacher.unet(noisy, timesteps, emb).sample
        terms = {"task": F.mse_loss(eps_s.float(), noise.float()),
                 "output": F.mse_loss(eps_s.float(), eps_t.float()),
                 "feature": feature_loss(f_s, f_t, self.pairs)}
        alphas = scheduler.alphas_cumprod
        # With a zero weight the term is still measured and logged, without building its graph.
        with torch.enable_grad() if self.weights.perceptual > 0 else torch.no_grad():
            terms["perceptual"] = self._perceptual(predicted_x0(noisy, eps_s, alphas, timesteps),
                                                   predicted_x0(noisy, eps_t, alphas, timesteps))
        return terms

    def train(self, steps: int, log: Any) -> dict[str, float]:
        self.student.unet.train()
        metrics: dict[str, float] = {}
        accum = self.exp.train.gradient_accumulation_steps
        for _ in range(steps):
            total, logged = 0.0, dict.fromkeys(("loss_task", "loss_output", "loss_feature", "loss_perceptual"), 0.0)
            for _ in range(accum):
                latents, emb = self._batch()
                with autocast(self.rt):
                    loss, parts = combine(self._terms(latents, emb), self.weights, self.normalizer)
                check_finite(loss, self.step, parts)
                backward(self.rt, loss, accum)
                total += loss.item() / accum
                logged = {k: logged[k] + v / accum for k, v in parts.items()}
            optimizer_step(self.rt, self.opt, self.params, max_grad_norm=self.exp.train.max_grad_norm,
                           scheduler=self.sched)
            self.step += 1
            metrics = {"loss": total, "lr": float(self.sched.get_last_lr()[0]), **logged}
            log(self.step, metrics)
        return metrics

    # ---- evaluation --------------------------------------------------------------------------
    def evaluate(self, out_dir: Path) -> Evaluation:
        self.student.unet.eval()
        evaluation = evaluate_samples(self.student, self.dataset, self.exp, out_dir, self.prompts, self.step,
                                      self.rt.device, split=self.split)
        ev = self.exp.eval
        evaluation.metrics.update(measure_latency(
            self.teacher, self.student, prompt=self.prompts[0], steps=ev.num_inference_steps,
            guidance_scale=ev.guidance_scale, resolution=self.dataset.size, device=self.rt.device,
            repeats=self.cfg.latency_repeats))
        evaluation.metrics["unet_params"] = float(count_params(self.student.unet))
        evaluation.metrics["teacher_unet_params"] = float(count_params(self.teacher.unet))
        if self.step == 0:
            # Nothing trained yet: this is the sweep's baseline, so score the teacher the same way. Its
            # figures (`baseline_teacher_<metric>` on the parent run) are the Pareto front's reference
            # point and what `promote --pick fastest-within N%` measures quality against.
            teacher = evaluate_samples(self.teacher, self.dataset, self.exp, out_dir / "teacher", self.prompts,
                                       self.step, self.rt.device, split=self.split)
            evaluation.metrics.update({f"teacher_{name}": value for name, value in teacher.metrics.items()})
        return evaluation

    # ---- checkpoints and exports ---------------------------------------------------------------
    def save(self, directory: Path) -> None:
        save_checkpoint(directory, modules={"student_unet": self.student.unet}, optimizers={"main": self.opt},
                        schedulers={"main": self.sched}, generator=self.rt.generator, step=self.step,
                        scaler=self.rt.scaler, extra={"loss_scale": self.normalizer.state_dict(),
                                                      "level": self.cfg.level})

    def restore(self, directory: Path) -> None:
        meta = load_checkpoint(directory, modules={"student_unet": self.student.unet}, optimizers={"main": self.opt},
                               schedulers={"main": self.sched}, generator=self.rt.generator, scaler=self.rt.scaler)
        self.step = int(meta["step"])
        self.normalizer.load_state_dict(meta.get("loss_scale", {}))

    def export(self, directory: Path) -> dict[str, Path]:
        from catsith_sweep.models.builtin import save_parts

        out: dict[str, Path] = {}
        directory.mkdir(parents=True, exist_ok=True)
        if "diffusers" in self.formats:
            out["diffusers"] = directory / "diffusers"
            staging = Path(tempfile.mkdtemp(dir=directory, prefix=".diffusers."))
            save_parts(self.student, staging)
            replace_dir(staging, out["diffusers"])
        if "onnx" in self.formats:
            from catsith_sweep.export.onnx_pipeline import export_onnx_pipeline

            out["onnx"] = export_onnx_pipeline(self.student, directory / "onnx",
                                               resolution=self.dataset.size).directory
        summary = {"teacher": self.teacher_source, "level": self.cfg.level, "removed": list(self.plan.removed),
                   "unet_params": count_params(self.student.unet),
                   "teacher_unet_params": count_params(self.teacher.unet), "steps": self.step}
        atomic_write_text(directory / STUDENT_FILE, json.dumps(summary, indent=2))
        return out
