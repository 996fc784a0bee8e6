"""The guide's sprite VAE ("Custom VAE Training"), trained from scratch on a sprite dataset.

Loss per batch: recon + beta * warm-up(step) * KL + perceptual_weight * perceptual + direction_weight *
direction consistency (`models.sprite_vae`). Batches come from `EntityBatchSampler` over the training
side of the held-out split (`trainers.heldout`), so the directions of an entity arrive together and the
direction term has groups to pull together; the sprite net of the perceptual term and of the metrics is
trained on that side too.
The perceptual term is the sprite net's LPIPS recipe (`metrics.features.sprite_lpips`) made
differentiable: the same unit-normalised feature maps, the net frozen. (VGG is not offered: torchvision
and its weights are not a dependency, and ImageNet features judge 64 px pixel art poorly anyway.)

Metric names (never a LoRA metric name with another meaning):
- `recon_mse` (per-pixel mean over RGBA), `psnr` (dB, per image, averaged), `sprite_lpips` (each
  reconstruction against its input, paired), `kl` (nats per image), `active_latents` (latent dims whose
  posterior mean varies over the data by > 0.01, Burda et al.), `palette_distance` (colour histograms of
  reconstructions against inputs, 0 to 1): on the held-out entities. Reconstructions decode the
  posterior mean.
- `sprite_fid_prior`, `sprite_kid_prior`, `sprite_kid_std_prior`, `sprite_lpips_prior` (each sample against
  its nearest real sprite), `palette_distance_prior`: `eval.num_metric_samples` images decoded from fixed
  N(0, I) latents against the held-out sprites.
- `direction_consistency`: the direction term over every held-out entity's latent means (mean
  within-entity variance; lower is more consistent) and `direction_consistency_ratio`: the same divided
  by the latents' overall variance, which a collapsed (tiny) latent space cannot game.
Every metric is on held-out sprites; none is computed on the training split.
Training logs `loss`, `recon`, `kl_train`, `perceptual`, `direction`, `kl_weight`, `lr`.

Exports (`export.formats`, default `onnx`): `sprite_vae_encoder.onnx` and `sprite_vae_decoder.onnx`
(catsith-formats.md §4), checked by onnxruntime against torch (a failed check raises), the check in
`onnx_check.json`; always `sprite_vae.safetensors` (the whole state dict) and `sprite_vae_config.json`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import torch

from catsith_sweep.config.schema import Experiment, VaeSection
from catsith_sweep.data.source import open_dataset
from catsith_sweep.errors import UserInputError
from catsith_sweep.io import atomic_write_text
from catsith_sweep.models.sprite_vae import SpriteVAE, direction_consistency_loss, kl_warmup_factor, vae_loss
from catsith_sweep.trainers import diffusion as D
from catsith_sweep.trainers.base import Evaluation
from catsith_sweep.trainers.checkpoint import load_checkpoint, save_checkpoint
from catsith_sweep.trainers.heldout import experiment_split, split_params
from catsith_sweep.trainers.runtime import autocast, backward, check_finite, optimizer_step, start_runtime
from catsith_sweep.trainers.surface import VAE, TrainerSurface, budget_steps

WEIGHTS_FILE = "sprite_vae.safetensors"
CONFIG_FILE = "sprite_vae_config.json"
CHECK_FILE = "onnx_check.json"
SAMPLES_ARRAYS = "samples.safetensors"
GRID_COLUMNS = 8
PRIOR_SEED_OFFSET = 1_000_003  # prior latents of the metrics: fixed per train.seed, apart from training noise
ACTIVE_THRESHOLD = 0.01


def perceptual_distance(net: Any, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The sprite net's LPIPS of each pair, shape (N,), with gradients flowing into `recon`.

    The recipe of `metrics.features.sprite_lpips` (which runs under no_grad): unit-normalise the channel
    vector at each position of every trunk block, squared difference summed over channels, mean over
    positions, sum over blocks. `net` should be frozen and in eval mode.
    """
    from catsith_sweep.metrics.features import unit_channels

    maps_recon = net.feature_maps(net.prepare(recon))
    with torch.no_grad():
        maps_target = net.feature_maps(net.prepare(target))
    total = torch.zeros(recon.shape[0], device=maps_recon[0].device)
    for fr, ft in zip(maps_recon, maps_target, strict=True):
        total = total + (unit_channels(fr) - unit_channels(ft)).pow(2).sum(dim=1).mean(dim=(1, 2))
    return total


class VaeTrainer:
    """Trains a SpriteVAE; exports the two ONNX graphs CatSith runs, plus its safetensors weights."""

    surface: ClassVar[TrainerSurface] = VAE

    def __init__(self, experiment: Experiment, workdir: Path) -> None:
        self.exp = experiment
        self.cfg = experiment.trainer_config(VaeSection)
        self.workdir = workdir
        self.step = 0
        self._net: Any = None

    # ---- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        train = self.exp.train
        self.formats = self.surface.formats(self.exp)  # refused now, not after the whole budget
        self.rt = start_runtime(self.exp)
        self.dataset = open_dataset(self.exp.data, self.exp.model.cache_dir)
        if self.dataset.size % 2 ** len(self.cfg.hidden_dims):
            raise UserInputError(f"vae.hidden_dims has {len(self.cfg.hidden_dims)} down-sampling blocks, so the "
                                 f"sprite size must be a multiple of {2 ** len(self.cfg.hidden_dims)}; "
                                 f"the dataset's is {self.dataset.size}")
        self.split, self.sampler = self.split_and_sampler(self.exp, self.dataset)
        self.train_indices, self.eval_indices = self.split.train, self.split.heldout
        self.epoch, self.batch_pos = 0, 0
        self._epoch_batches: list[list[int]] | None = None
        self.model = SpriteVAE(self.cfg.latent_dim, self.cfg.hidden_dims, self.dataset.size, 4).to(self.rt.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=train.learning_rate,
                                     weight_decay=train.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, D.lr_lambda(train.lr_scheduler, train.lr_warmup_steps, self.total_steps()))
        if self.cfg.perceptual_weight > 0:  # trained on first use: now, not inside the first step
            self.sprite_net()

    def sprite_net(self) -> Any:
        """The dataset's sprite feature network (trained and cached on first use), frozen. Loaded
        lazily: a trainer that only exports never needs it."""
        if self._net is None:
            from catsith_sweep.trainers.sampling import sprite_net

            net = sprite_net(self.dataset, self.exp, train_indices=self.train_indices)
            self._net = net.to(self.rt.device).eval().requires_grad_(False)
        return self._net

    @staticmethod
    def split_and_sampler(experiment: Experiment, dataset: Any) -> tuple[Any, Any]:
        """(the held-out split, an entity-grouped batch sampler over its training side); the split
        is refused (DatasetError) when too small to measure."""
        from catsith_sweep.data.dataset import EntityBatchSampler

        split = experiment_split(experiment, dataset)
        train = experiment.train
        return split, EntityBatchSampler(dataset, train.batch_size, train.seed, indices=split.train)

    @classmethod
    def batches_per_epoch(cls, experiment: Experiment, dataset: Any) -> int:
        """Entity-grouped batches in one pass over the train split (its first epoch's count)."""
        return len(cls.split_and_sampler(experiment, dataset)[1])

    def total_steps(self) -> int:
        return budget_steps(self.exp, lambda: len(self.sampler))

    def run_params(self) -> dict[str, str]:
        return split_params(self.split)

    # ---- training ----------------------------------------------------------------------------
    def _next_batch(self) -> list[int]:
        """The next entity-grouped batch: epoch and position are state, so a restore continues exactly."""
        if self._epoch_batches is None:
            self.sampler.set_epoch(self.epoch)
            self._epoch_batches = list(self.sampler)
        batch = self._epoch_batches[self.batch_pos]
        self.batch_pos += 1
        if self.batch_pos >= len(self._epoch_batches):
            self.epoch, self.batch_pos, self._epoch_batches = self.epoch + 1, 0, None
        return batch

    def _images(self, indices: list[int]) -> torch.Tensor:
        if self.dataset.has_augment:
            return torch.stack([self.dataset[i]["image"] for i in indices])
        return self.dataset.images[indices]

    def _loss(self, indices: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        x = self._images(indices).to(self.rt.device)
        entities = [self.dataset.entities[i] for i in indices]
        kl_weight = kl_warmup_factor(self.step, self.cfg.kl_warmup_steps)
        with autocast(self.rt):
            mu, log_var = self.model.encoder(x)
            # Noise from the trainer's CPU generator: a CUDA run draws what a CPU run draws, and the
            # checkpoint's one generator state covers it.
            eps = torch.randn(mu.shape, generator=self.rt.generator).to(mu.device, mu.dtype)
            recon = self.model.decoder(mu + eps * torch.exp(0.5 * log_var))
        recon, mu, log_var = recon.float(), mu.float(), log_var.float()
        parts = vae_loss(recon, x, mu, log_var, beta=self.cfg.beta * kl_weight)
        direction = direction_consistency_loss(mu, entities)
        loss = parts["total"] + self.cfg.direction_weight * direction
        perceptual = torch.zeros((), device=self.rt.device)
        if self.cfg.perceptual_weight > 0:
            perceptual = perceptual_distance(self.sprite_net(), recon, x).mean()
            loss = loss + self.cfg.perceptual_weight * perceptual
        metrics = {"loss": loss.item(), "recon": parts["recon"].item(), "kl_train": parts["kl"].item(),
                   "perceptual": perceptual.item(), "direction": direction.item(), "kl_weight": kl_weight}
        return loss, metrics

    def train(self, steps: int, log: Any) -> dict[str, float]:
        self.model.train()
        accum = self.exp.train.gradient_accumulation_steps
        metrics: dict[str, float] = {}
        for _ in range(steps):
            sums: dict[str, float] = {}
            for _ in range(accum):
                loss, parts = self._loss(self._next_batch())
                check_finite(loss, self.step, parts)
                backward(self.rt, loss, accum)
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0.0) + value / accum
            optimizer_step(self.rt, self.opt, self.model.parameters(), max_grad_norm=self.exp.train.max_grad_norm,
                           scheduler=self.sched)
            self.step += 1
            metrics = {**sums, "lr": float(self.sched.get_last_lr()[0])}
            log(self.step, metrics)
        return metrics

    # ---- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, images: torch.Tensor, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [self.model.encoder(images[s:s + batch_size].to(self.rt.device))
                for s in range(0, len(images), batch_size)]
        return torch.cat([o[0] for o in outs]).float().cpu(), torch.cat([o[1] for o in outs]).float().cpu()

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
        return torch.cat([self.model.decoder(latents[s:s + batch_size].to(self.rt.device)).float().cpu()
                          for s in range(0, len(latents), batch_size)])

    def prior_latents(self, count: int) -> torch.Tensor:
        """Fixed N(0, I) latents (per train.seed): every evaluation and trial decodes the same ones."""
        gen = torch.Generator().manual_seed(self.exp.train.seed + PRIOR_SEED_OFFSET)
        return torch.randn(count, self.cfg.latent_dim, generator=gen)

    @torch.no_grad()
    def evaluate(self, out_dir: Path) -> Evaluation:
        from catsith_sweep.metrics.features import sprite_lpips
        from catsith_sweep.metrics.scores import compute_image_metrics, palette_distance

        self.model.eval()
        net = self.sprite_net()
        metrics: dict[str, float] = {}
        inputs = self.dataset.images[self.eval_indices]
        mu, log_var = self._encode(inputs)
        recon = self._decode(mu)
        per_image = (recon - inputs).pow(2).flatten(start_dim=1).mean(dim=1)
        metrics["recon_mse"] = float(per_image.mean())
        metrics["psnr"] = float((10 * torch.log10(1.0 / per_image.clamp(min=1e-10))).mean())
        metrics["sprite_lpips"] = float(sprite_lpips(net, recon, inputs).mean())
        metrics["kl"] = float((-0.5 * (1 + log_var - mu.pow(2) - log_var.exp()).sum(dim=1)).mean())
        metrics["palette_distance"] = palette_distance(inputs, recon)

        prior = self._decode(self.prior_latents(self.exp.eval.num_metric_samples))
        scores = compute_image_metrics(inputs, prior, backend="sprite", net=net, seed=self.exp.train.seed)
        metrics.update({f"{key}_prior": value for key, value in scores.items()})
        metrics["palette_distance_prior"] = palette_distance(inputs, prior)

        metrics["active_latents"] = float((mu.var(dim=0) > ACTIVE_THRESHOLD).sum())
        consistency = float(direction_consistency_loss(mu, [self.dataset.entities[i] for i in self.eval_indices]))
        spread = float(mu.var(dim=0, unbiased=False).mean())
        metrics["direction_consistency"] = consistency
        metrics["direction_consistency_ratio"] = consistency / spread if spread > 0 else math.nan

        grid = self._save_grid(out_dir, inputs, recon, prior)
        return Evaluation(self.step, metrics, {"samples": grid})

    def _save_grid(self, out_dir: Path, inputs: torch.Tensor, recon: torch.Tensor, prior: torch.Tensor) -> Path:
        """samples.png (rows: held-out inputs, their reconstructions, prior samples) and, for the sweep's
        top-trials comparison, samples.safetensors (reconstructions with their inputs as reference)."""
        from catsith_sweep.metrics.images import make_grid_png, save_png_atomic
        from catsith_sweep.trainers.sampling import save_samples_tensors

        columns = min(GRID_COLUMNS, len(inputs), len(prior))
        picks = [int(i * len(inputs) / columns) for i in range(columns)]
        images = torch.cat([inputs[picks], recon[picks], prior[:columns]])
        grid = make_grid_png(images, rows=["inputs (held-out entities)", "reconstructions",
                                           "samples from the prior N(0, I)"], columns=columns)
        path = save_png_atomic(grid, out_dir / "samples.png")
        names = [self.dataset.names[self.eval_indices[i]] for i in picks]
        save_samples_tensors(out_dir / SAMPLES_ARRAYS, recon[picks].contiguous(), inputs[picks].contiguous(),
                             names, 1)
        return path

    # ---- checkpoints and exports -------------------------------------------------------------
    def save(self, directory: Path) -> None:
        # The whole state dict: BatchNorm running statistics are state as much as the weights.
        save_checkpoint(directory, modules={"vae": self.model}, optimizers={"main": self.opt},
                        schedulers={"main": self.sched}, generator=self.rt.generator, step=self.step,
                        extra={"epoch": self.epoch, "batch_pos": self.batch_pos}, scaler=self.rt.scaler)

    def restore(self, directory: Path) -> None:
        meta = load_checkpoint(directory, modules={"vae": self.model}, optimizers={"main": self.opt},
                               schedulers={"main": self.sched}, generator=self.rt.generator,
                               scaler=self.rt.scaler)
        self.step = int(meta["step"])
        self.epoch, self.batch_pos, self._epoch_batches = int(meta["epoch"]), int(meta["batch_pos"]), None

    def export(self, directory: Path) -> dict[str, Path]:
        from safetensors.torch import save_file

        formats = self.surface.formats(self.exp)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.eval()
        out: dict[str, Path] = {"weights": directory / WEIGHTS_FILE, "vae_config": directory / CONFIG_FILE}
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(out["weights"]), metadata={"format": "catsith-sprite-vae",
                                                        "config": json.dumps(self.model.config())})
        atomic_write_text(out["vae_config"], json.dumps({**self.model.config(), "steps": self.step}, indent=2))
        if "onnx" in formats:
            out.update(self._export_onnx(directory))
        return out

    def _export_onnx(self, directory: Path) -> dict[str, Path]:
        """Both graphs, verified by onnxruntime at another batch size (OnnxExportError when off)."""
        import copy

        import onnxruntime

        from catsith_sweep.export import onnx_vae

        # From a CPU copy: onnxruntime runs on the CPU, and CUDA's TF32 convolutions alone can exceed
        # the check's tolerance while the CPU graph is exactly right.
        result = onnx_vae.export_sprite_vae_onnx(copy.deepcopy(self.model).cpu(), directory)
        check = {
            "passed": True,
            "tolerance": onnx_vae.DEFAULT_TOLERANCE,
            "trace_batch": onnx_vae.TRACE_BATCH,
            "check_batch": onnx_vae.CHECK_BATCH,
            "encoder_max_abs_diff": result.encoder_max_abs_diff,
            "decoder_max_abs_diff": result.decoder_max_abs_diff,
            "opset": onnx_vae.OPSET_VERSION,
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
        }
        atomic_write_text(directory / CHECK_FILE, json.dumps(check, indent=2))
        return {"onnx_encoder": result.encoder_path, "onnx_decoder": result.decoder_path,
                "onnx_check": directory / CHECK_FILE}
