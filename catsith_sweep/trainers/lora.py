"""LoRA fine-tuning of a Stable-Diffusion-style base (the guide's lora_config.yaml as config keys).

diffusers + peft: adapters on the UNet's attention projections (optionally the text encoder's), AdamW
with a constant or cosine schedule after warm-up, gradient accumulation, mixed precision on CUDA.
Latents and caption embeddings are computed once when nothing makes them change between steps (no
augmentation, frozen text encoder: kohya's cache_latents), so the step loop is the UNet step alone.
It trains on the training side of the held-out split only and evaluates on the held-out side
(`trainers.heldout`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, ClassVar

import torch

from catsith_sweep.config.schema import Experiment, LoraSection
from catsith_sweep.data.source import open_dataset
from catsith_sweep.errors import ConfigError, UserInputError
from catsith_sweep.models.base_source import load_base
from catsith_sweep.trainers import diffusion as D
from catsith_sweep.trainers.base import Evaluation
from catsith_sweep.trainers.checkpoint import load_checkpoint, save_checkpoint
from catsith_sweep.trainers.heldout import experiment_split, random_batches_per_epoch, split_params
from catsith_sweep.trainers.runtime import autocast, backward, check_finite, optimizer_step, start_runtime
from catsith_sweep.trainers.sampling import default_prompts, evaluate_samples
from catsith_sweep.trainers.surface import LORA, TrainerSurface, budget_steps

TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


class LoraTrainer:
    """Trains a LoRA adapter; exports PEFT/kohya safetensors and the guide's CatSith JSON."""

    surface: ClassVar[TrainerSurface] = LORA

    def __init__(self, experiment: Experiment, workdir: Path) -> None:
        self.exp = experiment
        self.cfg = experiment.trainer_config(LoraSection)
        self.workdir = workdir
        self.step = 0

    # ---- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        train = self.exp.train
        self.formats = self.surface.formats(self.exp)  # refused now, not after the whole budget
        self.rt = start_runtime(self.exp)
        self.dataset = open_dataset(self.exp.data, self.exp.model.cache_dir)
        self.split = experiment_split(self.exp, self.dataset)  # refused now when too small to measure
        self.train_indices = self.split.train
        self.prompts = self.exp.eval.prompts or default_prompts(self.dataset)
        self.parts = load_base(self.exp.model.base, self.exp.model.cache_dir, self.exp.model.revision)
        for module in (self.parts.vae, self.parts.text_encoder, self.parts.unet):
            module.requires_grad_(False).to(self.rt.device)
        self._add_adapters()
        if train.gradient_checkpointing:
            self.parts.unet.enable_gradient_checkpointing()
        self.params = [p for m in (self.parts.unet, self.parts.text_encoder) for p in m.parameters()
                       if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=train.learning_rate, weight_decay=train.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, D.lr_lambda(train.lr_scheduler, train.lr_warmup_steps, self.total_steps()))
        self.cache = self._build_cache() if self._can_cache() else None

    def _add_adapters(self) -> None:
        """Adapters on the UNet (and text encoder), refused now rather than after the whole budget when
        `lora.target_modules` matches nothing or layers the exports cannot hold (convolutions)."""
        from peft import inject_adapter_in_model

        from catsith_sweep.export.lora_formats import lora_layers

        targets = list(self.cfg.target_modules)
        try:
            self.parts.unet.add_adapter(self._lora_config(targets))
            if self.cfg.train_text_encoder:
                # transformers 5's own add_adapter demands peft >= 0.22; inject directly, as diffusers does.
                self.parts.text_encoder = inject_adapter_in_model(self._lora_config(TEXT_TARGETS),
                                                                  self.parts.text_encoder)
            lora_layers(self.parts.unet, self.parts.text_encoder if self.cfg.train_text_encoder else None)
        except (ValueError, UserInputError) as exc:
            raise ConfigError(f"lora.target_modules {targets}: {exc}") from exc

    def _lora_config(self, targets: list[str]) -> Any:
        from peft import LoraConfig

        alpha: Any = self.cfg.alpha  # peft types it int but uses alpha / rank as a float
        return LoraConfig(r=self.cfg.rank, lora_alpha=alpha, lora_dropout=self.cfg.dropout,
                          target_modules=targets, init_lora_weights="gaussian")

    def _can_cache(self) -> bool:
        return (self.exp.data.cache_latents and not self.dataset.has_augment
                and not self.cfg.train_text_encoder)

    def _build_cache(self) -> dict[str, torch.Tensor]:
        """The training split's latents and captions, row i for `train_indices[i]` (held-out sprites are
        never encoded for training)."""
        return D.build_latent_cache(self.parts, self.dataset.images[self.train_indices],
                                    [self.dataset.captions[i] for i in self.train_indices], self.rt.device)

    def _embed(self, captions: list[str]) -> torch.Tensor:
        return D.embed(self.parts, captions, self.rt.device)

    @staticmethod
    def batches_per_epoch(experiment: Experiment, dataset: Any) -> int:
        """Micro-batches in one pass over the training split (batches are drawn at random, with
        replacement)."""
        return random_batches_per_epoch(experiment, dataset)

    def total_steps(self) -> int:
        return budget_steps(self.exp, lambda: self.batches_per_epoch(self.exp, self.dataset))

    def run_params(self) -> dict[str, str]:
        return {**split_params(self.split), **D.caption_overflow_params(self.parts.tokenizer, self.dataset.captions)}

    # ---- training ----------------------------------------------------------------------------
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents and caption embeddings for one micro-batch (caption dropout applied)."""
        generator, device = self.rt.generator, self.rt.device
        pick = torch.randint(0, len(self.train_indices), (self.exp.train.batch_size,), generator=generator)
        idx = torch.tensor([self.train_indices[i] for i in pick.tolist()])
        drop = torch.rand(len(idx), generator=generator) < self.cfg.caption_dropout_rate
        if self.cache is not None:  # rows of the training split
            return D.cached_batch(self.cache, pick, drop, generator, device)
        items = [self.dataset[i] for i in idx.tolist()]
        images = torch.stack([item["image"] for item in items])
        with torch.no_grad():
            pixels = D.to_vae_pixels(images, self.parts.rgba).to(device, self.parts.vae.dtype)
            latents = self.parts.vae.encode(pixels).latent_dist.sample() * self.parts.vae.config.scaling_factor
        captions = ["" if d else item["caption"] for item, d in zip(items, drop.tolist(), strict=True)]
        with contextlib.nullcontext() if self.cfg.train_text_encoder else torch.no_grad():
            emb = self._embed(captions)
        return latents, emb

    def train(self, steps: int, log: Any) -> dict[str, float]:
        self.parts.unet.train()
        if self.cfg.train_text_encoder:  # its LoRA dropout acts in training mode only
            self.parts.text_encoder.train()
        metrics: dict[str, float] = {}
        accum = self.exp.train.gradient_accumulation_steps
        for _ in range(steps):
            total = 0.0
            for _ in range(accum):
                latents, emb = self._batch()
                with autocast(self.rt):
                    loss = D.diffusion_loss(self.parts.unet, self.parts.scheduler, latents, emb,
                                            noise_offset=self.cfg.noise_offset,
                                            min_snr_gamma=self.cfg.min_snr_gamma, generator=self.rt.generator)
                check_finite(loss, self.step)
                backward(self.rt, loss, accum)
                total += loss.item() / accum
            optimizer_step(self.rt, self.opt, self.params, max_grad_norm=self.exp.train.max_grad_norm,
                           scheduler=self.sched)
            self.step += 1
            metrics = {"loss": total, "lr": float(self.sched.get_last_lr()[0])}
            log(self.step, metrics)
        return metrics

    def evaluate(self, out_dir: Path) -> Evaluation:
        self.parts.unet.eval()
        self.parts.text_encoder.eval()
        return evaluate_samples(self.parts, self.dataset, self.exp, out_dir, self.prompts, self.step,
                                self.rt.device, split=self.split)

    # ---- checkpoints and exports ---------------------------------------------------------------
    def _modules(self) -> dict[str, torch.nn.Module]:
        modules = {"unet_lora": self.parts.unet}
        if self.cfg.train_text_encoder:
            modules["text_encoder_lora"] = self.parts.text_encoder
        return modules

    def save(self, directory: Path) -> None:
        save_checkpoint(directory, modules=self._modules(), optimizers={"main": self.opt},
                        schedulers={"main": self.sched}, generator=self.rt.generator, step=self.step,
                        trainable_only=True, scaler=self.rt.scaler)

    def restore(self, directory: Path) -> None:
        meta = load_checkpoint(directory, modules=self._modules(), optimizers={"main": self.opt},
                               schedulers={"main": self.sched}, generator=self.rt.generator, strict=False,
                               scaler=self.rt.scaler)
        self.step = int(meta["step"])

    def export(self, directory: Path) -> dict[str, Path]:
        from catsith_sweep.config.loader import dump_resolved
        from catsith_sweep.export import lora_formats as F

        layers = F.lora_layers(self.parts.unet, self.parts.text_encoder if self.cfg.train_text_encoder else None)
        formats = self.surface.formats(self.exp)
        out: dict[str, Path] = {}
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"config": dump_resolved(self.exp), "base_model": self.exp.model.base}
        if "peft_safetensors" in formats:
            out["peft_safetensors"] = directory / "pytorch_lora_weights.safetensors"
            F.save_peft_safetensors(layers, out["peft_safetensors"], metadata=meta)
        if "kohya_safetensors" in formats:
            out["kohya_safetensors"] = directory / f"{self.exp.name}.kohya.safetensors"
            F.save_kohya_safetensors(layers, out["kohya_safetensors"], metadata=meta)
        if "catsith_json" in formats:
            out["catsith_json"] = directory / f"{self.exp.name}.lora.json"
            F.save_catsith_json(layers, out["catsith_json"], name=self.exp.name, base_model=self.exp.model.base)
        return out
