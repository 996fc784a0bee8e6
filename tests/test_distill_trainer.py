"""The distillation trainer on the tiny test base: loss terms and their normalisation, exact resume,
the trial loop end to end (metrics as declared, measured latency), and exports that reload."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from fixtures_models import experiment

from catsith_sweep.config.schema import Experiment
from catsith_sweep.errors import ModelSourceError
from catsith_sweep.trainers import make_trainer
from catsith_sweep.trainers.base import Report, Trainer, run_trial
from catsith_sweep.trainers.distill import DistillTrainer

torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("use_catsith_cache")

TERMS = ("loss_task", "loss_output", "loss_feature", "loss_perceptual")
N = 2  # steps before and after the checkpoint


def distill_experiment(base: Path, cache: Path, **overrides: Any) -> Experiment:
    config = {
        "name": "distill-test", "trainer": "distill", "model": {"base": str(base)},
        "data": {"synth_variants": 1},
        "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "num_threads": 1, "device": "cpu"},
        "eval": {"every_n_steps": 2, "num_metric_samples": 8, "num_inference_steps": 4, "seeds": [0]},
        "distill": {"level": "micro", "latency_repeats": 3},
    }
    return experiment(config, cache, **overrides)


def _student_weights(trainer: DistillTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.student.unet.state_dict().items()}


def test_resume_is_exact_and_every_term_is_logged_and_normalised(tiny_base: Path, catsith_cache: Path,
                                                                 tmp_path: Path) -> None:
    """Train 2N steps straight; and N steps, save, restore into a new trainer, N more: the same student,
    the same loss scales. Every randomness in play: data order, caption dropout, noise, timesteps, a
    cosine schedule with warm-up, gradient accumulation, the normaliser's first values."""
    exp = distill_experiment(tiny_base, catsith_cache,
                             train={"max_steps": 2 * N, "gradient_accumulation_steps": 2, "lr_scheduler": "cosine",
                                    "lr_warmup_steps": 1},
                             distill={"level": "tiny", "normalize_losses": True, "caption_dropout_rate": 0.3})
    logs: list[dict[str, float]] = []
    straight = DistillTrainer(exp, tmp_path / "straight")
    straight.setup()
    start = _student_weights(straight)
    straight.train(2 * N, lambda _step, metrics: logs.append(metrics))

    for metrics in logs:
        assert set(metrics) == {"loss", "lr", *TERMS}
        assert all(math.isfinite(metrics[t]) and metrics[t] > 0 for t in TERMS), metrics
    # Normalised, the first step's loss is the sum of the weights (each term divided by itself).
    scales = straight.normalizer.state_dict()
    assert set(scales) == {"task", "output", "feature", "perceptual"} and all(v > 0 for v in scales.values())
    assert logs[0]["loss"] != pytest.approx(sum(logs[0][t] for t in TERMS))

    first = DistillTrainer(exp, tmp_path / "first")
    first.setup()
    first.train(N, lambda *_: None)
    first.save(tmp_path / "ckpt")
    resumed = DistillTrainer(exp, tmp_path / "resumed")
    resumed.setup()
    resumed.restore(tmp_path / "ckpt")
    assert resumed.step == N and resumed.normalizer.state_dict() == first.normalizer.state_dict() == scales
    resumed.train(N, lambda *_: None)

    got, want = _student_weights(resumed), _student_weights(straight)
    assert [k for k in want if not torch.equal(got[k], want[k])] == []
    assert any(not torch.equal(start[k], v) for k, v in want.items())  # training moved the student
    assert any(not torch.equal(_student_weights(first)[k], v) for k, v in want.items())
    # The teacher stayed frozen: the checkpoint holds the student alone.
    assert all(not p.requires_grad for p in straight.teacher.unet.parameters())


def test_without_normalisation_the_loss_is_the_weighted_raw_terms(tiny_base: Path, catsith_cache: Path,
                                                                  tmp_path: Path) -> None:
    weights = {"task_weight": 0.5, "output_weight": 2.0, "feature_weight": 0.25, "perceptual_weight": 3.0}
    exp = distill_experiment(tiny_base, catsith_cache, distill={**weights, "level": "small"})
    trainer = DistillTrainer(exp, tmp_path)
    trainer.setup()
    metrics = trainer.train(1, lambda *_: None)
    expected = sum(weights[f"{t[5:]}_weight"] * metrics[t] for t in TERMS)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
    assert trainer.normalizer.state_dict() == {}


def test_run_trial_reports_latency_and_exports_reload(tiny_base: Path, catsith_cache: Path, tmp_path: Path) -> None:
    import numpy as np
    from diffusers import UNet2DConditionModel

    from catsith_sweep.export.onnx_pipeline import unet_session_output

    exp = distill_experiment(tiny_base, catsith_cache, export={"formats": ["diffusers", "onnx"]})
    reports: list[Report] = []
    trainer = make_trainer(exp, tmp_path)
    assert isinstance(trainer, DistillTrainer) and isinstance(trainer, Trainer)
    run_trial(trainer, exp, tmp_path, reports.append, log_every=1)

    evals = [r for r in reports if r.checkpoint is not None]
    assert [r.step for r in evals] == [2]
    metrics = evals[0].metrics
    assert set(metrics) == set(DistillTrainer.surface.metric_names(exp))  # exactly as declared
    assert all(math.isfinite(v) for v in metrics.values())
    assert 0 < metrics["latency_ratio"] < 1 and metrics["latency_ms"] < metrics["teacher_latency_ms"]
    assert metrics["latency_ratio"] == pytest.approx(metrics["latency_ms"] / metrics["teacher_latency_ms"])
    assert metrics["unet_params"] < metrics["teacher_unet_params"]
    assert "split.heldout_images" in trainer.run_params()  # scored on the held-out split, as LoRA is

    final = reports[-1]
    assert final.final and set(final.exports) == {"diffusers", "onnx"}
    unet_dir = final.exports["diffusers"] / "unet"
    reloaded, info = UNet2DConditionModel.from_pretrained(unet_dir, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    student = trainer.student.unet
    assert json.loads((unet_dir / "config.json").read_text())["block_out_channels"] == list(
        student.config.block_out_channels)
    for key, value in student.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    summary = json.loads((tmp_path / "export" / "distill.json").read_text())
    assert summary["level"] == "micro" and summary["unet_params"] == metrics["unet_params"]

    # the exported student UNet gives the torch student's noise prediction in onnxruntime
    channels, side = int(student.config.in_channels), int(student.config.sample_size)
    g = torch.Generator().manual_seed(5)
    sample = torch.randn(1, channels, side, side, generator=g)
    tokens = int(trainer.teacher.tokenizer.model_max_length)  # the export fixes the text length
    hidden = torch.randn(1, tokens, int(student.config.cross_attention_dim), generator=g)
    with torch.no_grad():
        want = student.eval()(sample, torch.tensor([10.0]), hidden).sample.numpy()
    got = unet_session_output(final.exports["onnx"], sample.numpy(), np.array([10.0], np.float32), hidden.numpy())
    assert np.abs(got - want).max() < 1e-3


def test_a_missing_teacher_is_refused_naming_it(catsith_cache: Path, tmp_path: Path) -> None:
    exp = distill_experiment(tmp_path / "nowhere", catsith_cache, distill={"teacher": str(tmp_path / "no-teacher")})
    with pytest.raises(ModelSourceError, match="^distill.teacher: .*no-teacher.*not a diffusers model folder"):
        DistillTrainer(exp, tmp_path).setup()


def test_the_untrained_evaluation_also_scores_the_teacher(tiny_base: Path, catsith_cache: Path,
                                                          tmp_path: Path) -> None:
    """The sweep's baseline (an evaluation before any step) carries the teacher's own sprite metrics, the
    reference point of the Pareto front; evaluations after training do not pay for them again."""
    trainer = DistillTrainer(distill_experiment(tiny_base, catsith_cache), tmp_path)
    trainer.setup()
    before = trainer.evaluate(tmp_path / "eval0").metrics
    assert math.isfinite(before["teacher_sprite_kid"]) and math.isfinite(before["teacher_sprite_fid"])
    assert before["teacher_sprite_fid"] != before["sprite_fid"]  # the micro student draws other sprites
    trainer.train(1, lambda _step, _metrics: None)
    assert not any(name.startswith("teacher_sprite") for name in trainer.evaluate(tmp_path / "eval1").metrics)
