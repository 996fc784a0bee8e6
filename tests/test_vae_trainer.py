"""The SpriteVAE trainer on a real tiny model (no mocks): exact checkpoint resume (BatchNorm statistics
and the entity-grouped data order included), the plain trial loop with its metrics, grid and checked
ONNX export, non-finite losses and epoch budgets (export formats: tests/test_trainers.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from fixtures_models import experiment
from PIL import Image
from safetensors.torch import load_file

from catsith_sweep.config.schema import Experiment
from catsith_sweep.export import onnx_vae
from catsith_sweep.trainers import make_trainer
from catsith_sweep.trainers.base import Report, Trainer, run_trial
from catsith_sweep.trainers.heldout import split_params
from catsith_sweep.trainers.vae import VaeTrainer, perceptual_distance

torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("use_catsith_cache")

# Narrow widths keep a step at a few milliseconds; the 64 px input and 4 down-sampling blocks are CatSith's.
VAE_CONFIG: dict[str, Any] = {
    "name": "vae-test",
    "trainer": "vae",
    "data": {"synth_variants": 1},
    "train": {"max_steps": 4, "batch_size": 16, "learning_rate": 1e-3, "num_threads": 1, "device": "cpu"},
    "eval": {"every_n_steps": 2, "num_metric_samples": 8},
    "vae": {"latent_dim": 8, "hidden_dims": [8, 16, 16, 32], "beta": 0.5, "direction_weight": 10.0},
}
N = 3


def vae_experiment(cache: Path, **overrides: Any) -> Experiment:
    return experiment(VAE_CONFIG, cache, **overrides)


def _quiet(step: int, metrics: dict[str, float]) -> None:
    pass


def _state(trainer: VaeTrainer) -> dict[str, torch.Tensor]:
    """Every tensor of the model, BatchNorm running statistics and batch counters included."""
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_vae_checkpoint_restores_exactly(catsith_cache: Path, tmp_path: Path) -> None:
    # Every source of randomness and state in play: the reparameterisation noise, entity-grouped data
    # order across an epoch boundary (3 batches per epoch, 2 per step), BatchNorm statistics, KL
    # warm-up, a cosine schedule with warm-up, and the perceptual term.
    exp = vae_experiment(catsith_cache, train={"max_steps": 2 * N, "gradient_accumulation_steps": 2,
                                               "lr_scheduler": "cosine", "lr_warmup_steps": 2},
                         vae={"kl_warmup_steps": 4, "perceptual_weight": 5.0})
    straight = VaeTrainer(exp, tmp_path / "straight")
    straight.setup()
    start = _state(straight)
    straight.train(2 * N, _quiet)

    first = VaeTrainer(exp, tmp_path / "first")
    first.setup()
    first.train(N, _quiet)
    first.save(tmp_path / "ckpt")
    assert first.epoch >= 1  # the checkpoint sits past an epoch boundary

    resumed = VaeTrainer(exp, tmp_path / "resumed")
    resumed.setup()
    resumed.restore(tmp_path / "ckpt")
    assert resumed.step == N
    resumed.train(N, _quiet)

    want, got = _state(straight), _state(resumed)
    assert got.keys() == want.keys() and any("running_mean" in k for k in want)
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"
    assert any(not torch.equal(start[k], v) for k, v in want.items() if "running_var" in k)
    assert any(not torch.equal(_state(first)[k], v) for k, v in want.items())
    saved = load_file(str(tmp_path / "ckpt" / "vae.safetensors"))
    assert set(saved) == set(first.model.state_dict())  # the whole state dict, buffers too


def test_run_trial_vae_metrics_grid_and_checked_onnx(catsith_cache: Path, tmp_path: Path) -> None:
    exp = vae_experiment(catsith_cache, vae={"perceptual_weight": 2.0})
    reports: list[Report] = []
    trainer = make_trainer(exp, tmp_path)
    assert isinstance(trainer, VaeTrainer) and isinstance(trainer, Trainer)
    final = run_trial(trainer, exp, tmp_path, reports.append, log_every=1)

    train_logs = [r for r in reports if r.checkpoint is None and not r.final]
    evals = [r for r in reports if r.checkpoint is not None]
    assert [r.step for r in train_logs] == [1, 2, 3, 4] and [r.step for r in evals] == [2, 4]
    assert all({"loss", "recon", "kl_train", "perceptual", "direction", "lr"} <= set(r.metrics) for r in train_logs)
    for r in evals:
        for key in ("recon_mse", "psnr", "sprite_lpips", "kl", "sprite_fid_prior", "sprite_kid_prior",
                    "sprite_lpips_prior", "direction_consistency", "direction_consistency_ratio",
                    "active_latents", "palette_distance", "palette_distance_prior"):
            assert key in r.metrics and np.isfinite(r.metrics[key]), key
        assert "sprite_fid" not in r.metrics  # no LoRA metric name with another meaning
        assert set(r.metrics) == set(VaeTrainer.surface.metric_names(exp))  # exactly what it declares
        assert 0 < r.metrics["recon_mse"] < 1 and r.metrics["psnr"] > 0 and r.metrics["kl"] >= 0
        assert 0 <= r.metrics["palette_distance"] <= 1 and 0 <= r.metrics["palette_distance_prior"] <= 1
        samples = r.images["samples"]
        with Image.open(samples) as grid:
            assert grid.format == "PNG" and grid.height > 3 * 128  # three rows of 64 px sprites drawn at 128
        assert samples.parent.name == f"step_{r.step:06d}"
        arrays = load_file(str(samples.with_suffix(".safetensors")))
        assert arrays["images"].shape == arrays["reference"].shape == (8, 4, 64, 64)

    assert reports[0].params == split_params(trainer.split) and not any(r.params for r in reports[1:])
    assert reports[0].params["split.heldout_images"] == "17"

    last = reports[-1]
    assert last.final and final.step == 4 and last.metrics == evals[-1].metrics
    assert set(last.exports) == {"onnx_encoder", "onnx_decoder", "onnx_check", "weights", "vae_config"}
    export = tmp_path / "export"
    assert {p.name for p in export.iterdir()} == {
        "sprite_vae_encoder.onnx", "sprite_vae_decoder.onnx", "onnx_check.json", "sprite_vae.safetensors",
        "sprite_vae_config.json", "config.yaml"}
    check = json.loads((export / "onnx_check.json").read_text())
    assert check["passed"] is True and check["check_batch"] != check["trace_batch"]
    assert 0 <= check["encoder_max_abs_diff"] <= 1e-4 and 0 <= check["decoder_max_abs_diff"] <= 1e-4

    # CatSith's side: onnxruntime on the exported graphs gives what the trained torch model gives.
    trainer.model.eval()
    images = trainer.dataset.images[:5]
    encoder = ort.InferenceSession(str(export / "sprite_vae_encoder.onnx"), providers=["CPUExecutionProvider"])
    mu, log_var = encoder.run(["mu", "log_var"], {"image": images.numpy()})
    with torch.no_grad():
        want_mu, want_lv = trainer.model.encoder(images)
    np.testing.assert_allclose(mu, want_mu.numpy(), atol=1e-4)
    np.testing.assert_allclose(log_var, want_lv.numpy(), atol=1e-4)
    decoded = onnx_vae.decode_with_onnxruntime(export / "sprite_vae_decoder.onnx", mu)
    with torch.no_grad():
        np.testing.assert_allclose(decoded, trainer.model.decoder(want_mu).numpy(), atol=1e-4)
    weights = load_file(str(export / "sprite_vae.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in trainer.model.state_dict().items())
    assert json.loads((export / "sprite_vae_config.json").read_text())["latent_dim"] == 8


def test_failed_onnx_check_fails_the_export(catsith_cache: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = VaeTrainer(vae_experiment(catsith_cache), tmp_path)
    trainer.setup()
    real = onnx_vae.export_sprite_vae_onnx
    monkeypatch.setattr(onnx_vae, "export_sprite_vae_onnx",
                        lambda vae, out, **kw: real(vae, out, tolerance=-1.0))  # no difference passes
    with pytest.raises(onnx_vae.OnnxExportError, match="differs from torch"):
        trainer.export(tmp_path / "export")
    assert not list((tmp_path / "export").glob("*.onnx")) and not (tmp_path / "export" / "onnx_check.json").exists()


def test_non_finite_loss_raises(catsith_cache: Path, tmp_path: Path) -> None:
    trainer = VaeTrainer(vae_experiment(catsith_cache), tmp_path)
    trainer.setup()
    trainer.train(1, _quiet)
    with torch.no_grad():
        trainer.model.decoder.fc.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="at step 1"):
        trainer.train(2, _quiet)
    assert trainer.step == 1


def test_perceptual_distance_is_the_metric_with_gradients(catsith_cache: Path, tmp_path: Path) -> None:
    from catsith_sweep.metrics.features import sprite_lpips

    trainer = VaeTrainer(vae_experiment(catsith_cache), tmp_path)
    trainer.setup()
    net = trainer.sprite_net()
    target = trainer.dataset.images[:4]
    recon = torch.rand(4, 4, 64, 64, requires_grad=True)
    distance = perceptual_distance(net, recon, target)
    torch.testing.assert_close(distance.detach(), sprite_lpips(net, recon.detach(), target))
    distance.sum().backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in net.parameters())


def test_epoch_budget_is_what_the_sweep_plans(catsith_cache: Path, tmp_path: Path) -> None:
    """An epoch budget counts entity-grouped batches of the train split, 2 to a step: the sweep's plan
    (before any trial) is what the trial takes and reports."""
    from catsith_sweep.trainers import planned_budget

    exp = vae_experiment(catsith_cache, train={"max_steps": None, "epochs": 2, "gradient_accumulation_steps": 2},
                         eval={"every_n_steps": 3})
    steps, evaluations = planned_budget(exp)
    reports: list[Report] = []
    trainer = VaeTrainer(exp, tmp_path)
    run_trial(trainer, exp, tmp_path, reports.append)
    assert trainer.step == trainer.total_steps() == steps == -(-len(trainer.sampler) // 2) * 2
    evals = [r for r in reports if r.checkpoint is not None]
    assert len(evals) == evaluations == -(-steps // 3) and evals[-1].step == steps
    assert set(trainer.train_indices).isdisjoint(trainer.eval_indices)
    entities = [trainer.dataset.entities[i] for i in trainer.eval_indices]
    assert not set(entities) & {trainer.dataset.entities[i] for i in trainer.train_indices}  # held-out entities


def _rows(images: torch.Tensor) -> set[bytes]:
    return {(image * 255).round().byte().numpy().tobytes() for image in images}


def test_vae_trains_on_the_training_split_and_scores_the_heldout_one(
        catsith_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image the encoder sees while training is a training-split sprite (an epoch covers them
    all), the perceptual/metric sprite net trained on that split only, and every metric's reference
    set is the held-out sprites (split by data.split_seed, not train.seed)."""
    from catsith_sweep.metrics import scores
    from catsith_sweep.models.sprite_net import training_set_key

    exp = vae_experiment(catsith_cache, train={"seed": 3}, vae={"perceptual_weight": 1.0})
    trainer = VaeTrainer(exp, tmp_path)
    trainer.setup()
    split, images = trainer.split, trainer.dataset.images
    assert split.seed == 0 and trainer.eval_indices == split.heldout and trainer.train_indices == split.train
    heldout, train = _rows(images[split.heldout]), _rows(images[split.train])
    assert len(split.heldout) == 17 and not heldout & train  # distinct designs: the check can fail

    seen: list[torch.Tensor] = []
    hook = trainer.model.encoder.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    trainer.train(len(trainer.sampler), _quiet)  # one epoch
    hook.remove()
    assert _rows(torch.cat(seen)) == train

    net = trainer.sprite_net()
    assert net.config.training["training_set"] == training_set_key([trainer.dataset.names[i] for i in split.train])

    references: list[torch.Tensor] = []
    real_metrics = scores.compute_image_metrics

    def spy(real: torch.Tensor, fake: torch.Tensor, **kwargs: Any) -> dict[str, float]:
        references.append(real)
        return real_metrics(real, fake, **kwargs)

    monkeypatch.setattr(scores, "compute_image_metrics", spy)
    evaluation = trainer.evaluate(tmp_path / "eval")
    (reference,) = references
    assert torch.equal(reference, images[split.heldout])  # the prior metrics' reference set
    arrays = load_file(str(evaluation.images["samples"].with_suffix(".safetensors")))
    assert _rows(arrays["reference"]) <= heldout  # reconstructions are of held-out sprites
