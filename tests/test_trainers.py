"""The trainers on real tiny models (no mocks): exact checkpoint resume, the plain trial loop with its
reports, evaluations and exports, non-finite losses, devices and precision, and step budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from fixtures_models import TINY_BASE_CONFIG, experiment, lora_experiment
from safetensors import safe_open
from safetensors.torch import load_file

from catsith_sweep.config.schema import Experiment
from catsith_sweep.errors import ConfigError
from catsith_sweep.trainers import make_trainer, planned_budget
from catsith_sweep.trainers import runtime as R
from catsith_sweep.trainers.base import Report, Trainer, run_trial
from catsith_sweep.trainers.full import FullTrainer
from catsith_sweep.trainers.heldout import split_params
from catsith_sweep.trainers.lora import LoraTrainer

torch.set_num_threads(1)

pytestmark = pytest.mark.usefixtures("use_catsith_cache")

N = 3  # steps before and after the checkpoint


def _quiet(step: int, metrics: dict[str, float]) -> None:
    pass


def _trainable(trainer: Any) -> dict[str, torch.Tensor]:
    return {f"{i}.{name}": p.detach().clone()
            for i, module in enumerate((trainer.parts.unet, trainer.parts.text_encoder))
            for name, p in module.named_parameters() if p.requires_grad}


def _all_weights(trainer: FullTrainer) -> dict[str, torch.Tensor]:
    return {f"{part}.{name}": p.detach().clone() for part, module in trainer._modules().items()
            for name, p in module.named_parameters()}


def _assert_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    different = [name for name in want if not torch.equal(got[name], want[name])]
    assert not different, f"{len(different)} tensors differ after resume, e.g. {different[:3]}"


def _resume_matches_straight_run(make: Any, weights: Any, tmp_path: Path) -> tuple[Any, Any]:
    """Train 2N steps straight; and N steps, save, then a new trainer restores and trains N more."""
    straight = make(tmp_path / "straight")
    straight.setup()
    start = weights(straight)
    straight.train(2 * N, _quiet)

    first = make(tmp_path / "first")
    first.setup()
    first.train(N, _quiet)
    first.save(tmp_path / "ckpt")

    resumed = make(tmp_path / "resumed")
    resumed.setup()
    resumed.restore(tmp_path / "ckpt")
    assert resumed.step == N
    resumed.train(N, _quiet)
    assert resumed.step == straight.step == 2 * N

    _assert_identical(weights(resumed), weights(straight))
    # The comparison means something: training moved the weights, and so did the second half.
    assert any(not torch.equal(start[k], v) for k, v in weights(straight).items())
    assert any(not torch.equal(weights(first)[k], v) for k, v in weights(straight).items())
    return first, resumed


def test_lora_checkpoint_restores_exactly(tiny_base: Path, catsith_cache: Path, tmp_path: Path) -> None:
    # Every source of randomness in play: data order, caption dropout, noise offset, timesteps, LoRA
    # dropout (global torch RNG), a cosine schedule with warm-up, gradient accumulation, Min-SNR.
    exp = lora_experiment(
        tiny_base, catsith_cache,
        train={"max_steps": 2 * N, "gradient_accumulation_steps": 2, "lr_scheduler": "cosine", "lr_warmup_steps": 2},
        lora={"dropout": 0.1, "caption_dropout_rate": 0.3, "noise_offset": 0.05, "min_snr_gamma": 5.0},
    )
    first, _ = _resume_matches_straight_run(lambda d: LoraTrainer(exp, d), _trainable, tmp_path)
    # The checkpoint holds the adapter only, not a copy of the frozen base.
    saved = load_file(str(tmp_path / "ckpt" / "unet_lora.safetensors"))
    assert saved and all(".lora_" in key for key in saved)
    assert len(saved) == sum(1 for p in first.parts.unet.parameters() if p.requires_grad)


def test_lora_checkpoint_with_text_encoder_restores_exactly(tiny_base: Path, catsith_cache: Path,
                                                            tmp_path: Path) -> None:
    exp = lora_experiment(tiny_base, catsith_cache, train={"max_steps": 2 * N},
                          lora={"train_text_encoder": True, "caption_dropout_rate": 0.3})
    first, _ = _resume_matches_straight_run(lambda d: LoraTrainer(exp, d), _trainable, tmp_path)
    assert first.cache is None  # a trained text encoder embeds captions every step
    assert any(name.startswith("1.") for name in _trainable(first))


@pytest.mark.parametrize("vae_steps", [2, 4], ids=["save-in-unet-phase", "save-in-vae-phase"])
def test_full_checkpoint_restores_exactly(vae_steps: int, catsith_cache: Path, tmp_path: Path) -> None:
    exp = experiment(TINY_BASE_CONFIG, catsith_cache, train={"max_steps": 2 * N, "batch_size": 4},
                     full={"vae_steps": vae_steps, "vae_batch_size": 4})
    _, resumed = _resume_matches_straight_run(lambda d: FullTrainer(exp, d), _all_weights, tmp_path)
    assert resumed.parts.vae.config.scaling_factor != 0.18215  # fitted to the trained VAE, and restored


def test_run_trial_lora_reports_evaluates_and_exports(tiny_base: Path, catsith_cache: Path, tmp_path: Path) -> None:
    exp = lora_experiment(tiny_base, catsith_cache,
                          export={"formats": ["peft_safetensors", "kohya_safetensors", "catsith_json"]})
    reports: list[Report] = []
    checkpoint_configs: list[str] = []

    def report(r: Report) -> None:
        reports.append(r)
        if r.checkpoint is not None:  # the checkpoint is replaced by the next one: look at it now
            checkpoint_configs.append((r.checkpoint / "config.yaml").read_text())
            assert (r.checkpoint / "trainer_state.pt").is_file()

    trainer = make_trainer(exp, tmp_path)
    assert isinstance(trainer, LoraTrainer) and isinstance(trainer, Trainer)
    final = run_trial(trainer, exp, tmp_path, report, log_every=1)

    train_logs = [r for r in reports if r.checkpoint is None and not r.final]
    evals = [r for r in reports if r.checkpoint is not None]
    assert [r.step for r in train_logs] == [1, 2, 3, 4]
    assert all(set(r.metrics) == {"loss", "lr"} for r in train_logs)
    assert [r.step for r in evals] == [2, 4]
    assert all(set(r.metrics) == set(LoraTrainer.surface.metric_names(exp)) for r in evals)  # as declared
    for r in evals:
        for key in ("loss", "lr", "sprite_fid", "sprite_kid", "sprite_lpips", "kind_accuracy", "direction_accuracy"):
            assert key in r.metrics and isinstance(r.metrics[key], float), key
        assert 0.0 <= r.metrics["kind_accuracy"] <= 1.0
        samples = r.images["samples"]
        assert samples.is_file() and samples.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert samples.parent.name == f"step_{r.step:06d}"
    assert len(checkpoint_configs) == 2
    assert all(yaml.safe_load(text) == exp.model_dump(mode="json") for text in checkpoint_configs)
    # The held-out split, once, with the first report (the sweep logs these as MLflow params).
    assert reports[0].params == split_params(trainer.split) and not any(r.params for r in reports[1:])
    assert {k: reports[0].params[k] for k in ("split.seed", "split.heldout_images", "split.train_images",
                                              "split.heldout_entities", "split.train_entities")} == {
        "split.seed": "0", "split.heldout_images": "17", "split.train_images": "44",
        "split.heldout_entities": "3", "split.train_entities": "16"}

    last = reports[-1]
    assert last.final and last.step == 4 and final.step == 4 and sum(r.final for r in reports) == 1
    assert last.metrics == evals[-1].metrics
    assert set(last.exports) == {"peft_safetensors", "kohya_safetensors", "catsith_json"}
    assert all(path.is_file() for path in last.exports.values())
    assert yaml.safe_load((tmp_path / "export" / "config.yaml").read_text()) == exp.model_dump(mode="json")
    for fmt in ("peft_safetensors", "kohya_safetensors"):  # each file carries its config too
        with safe_open(str(last.exports[fmt]), framework="pt") as fh:
            assert yaml.safe_load(fh.metadata()["catsith_sweep.config"]) == exp.model_dump(mode="json")

    _assert_exports_reproduce_adapter(trainer, tiny_base, last.exports)


def test_run_trial_resumes_from_its_checkpoint(tiny_base: Path, catsith_cache: Path, tmp_path: Path) -> None:
    """What a sweep does after a lost trial: run_trial from the last checkpoint ends where an
    uninterrupted run ends, evaluations in between included."""
    import shutil

    exp = lora_experiment(tiny_base, catsith_cache, lora={"caption_dropout_rate": 0.2})
    kept = tmp_path / "kept_step2"

    def keep_first(r: Report) -> None:
        if r.checkpoint is not None and r.step == 2:
            shutil.copytree(r.checkpoint, kept)

    run_trial(LoraTrainer(exp, tmp_path / "a"), exp, tmp_path / "a", keep_first)
    steps: list[int] = []
    run_trial(LoraTrainer(exp, tmp_path / "b"), exp, tmp_path / "b", lambda r: steps.append(r.step),
              resume_from=kept, log_every=1)
    assert steps == [3, 4, 4]  # two training logs, then the evaluation at 4 as the final report
    want = load_file(str(tmp_path / "a" / "export" / "pytorch_lora_weights.safetensors"))
    got = load_file(str(tmp_path / "b" / "export" / "pytorch_lora_weights.safetensors"))
    _assert_identical(got, want)


def _unet_output(unet: Any, embeddings: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(2, int(unet.config.in_channels), 8, 8, generator=generator)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), embeddings).sample


def _assert_exports_reproduce_adapter(trainer: LoraTrainer, base: Path, exports: dict[str, Path]) -> None:
    """diffusers' own `load_lora_weights` on the plain base gives the trained adapter's UNet output."""
    from catsith_sweep.export.lora_formats import read_catsith_json
    from catsith_sweep.models.builtin import load_parts, to_pipeline

    trainer.parts.unet.eval()
    with torch.no_grad():
        embeddings = trainer._embed(["pixel art game sprite, facing left", ""])
    want = _unet_output(trainer.parts.unet, embeddings)
    base_out = _unet_output(load_parts(base).unet, embeddings)
    assert (want - base_out).abs().max() > 1e-4  # the adapter really changes the output

    for fmt in ("peft_safetensors", "kohya_safetensors"):
        pipe = to_pipeline(load_parts(base))
        pipe.load_lora_weights(str(exports[fmt]))
        torch.testing.assert_close(_unet_output(pipe.unet, embeddings), want, atol=1e-5, rtol=0, msg=fmt)

    layers = read_catsith_json(exports["catsith_json"])
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in trainer.parts.unet.named_parameters()
               if ".lora_A." in name}
    assert {layer.name for layer in layers} == {f"unet.{name}" for name in adapted}
    assert all(layer.rank == 4 and layer.alpha == 8.0 for layer in layers)


def test_non_finite_loss_raises(tiny_base: Path, catsith_cache: Path, tmp_path: Path) -> None:
    """A NaN in the adapter (as a diverged run leaves it) stops training at the step it shows up."""
    trainer = LoraTrainer(lora_experiment(tiny_base, catsith_cache), tmp_path)
    trainer.setup()
    trainer.train(1, _quiet)
    lora_a = next(p for name, p in trainer.parts.unet.named_parameters() if ".lora_A." in name)
    with torch.no_grad():
        lora_a[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="at step 1"):
        trainer.train(2, _quiet)
    assert trainer.step == 1


def test_full_trainer_non_finite_raises(catsith_cache: Path, tmp_path: Path) -> None:
    trainer = FullTrainer(experiment(TINY_BASE_CONFIG, catsith_cache, full={"vae_steps": 2, "vae_batch_size": 2}),
                          tmp_path)
    trainer.setup()
    with torch.no_grad():
        next(trainer.parts.vae.parameters()).fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        trainer.train(1, _quiet)


def test_lora_diverging_learning_rate_raises(tiny_base: Path, catsith_cache: Path, tmp_path: Path) -> None:
    """A learning rate far too high, without clipping, really diverges: the loop must stop, not go on."""
    exp = lora_experiment(tiny_base, catsith_cache, train={"learning_rate": 1e12, "max_grad_norm": None})
    trainer = LoraTrainer(exp, tmp_path)
    trainer.setup()
    with pytest.raises(FloatingPointError):
        trainer.train(20, _quiet)
    assert 1 <= trainer.step < 20


def _any_experiment(trainer: str, cache: Path, **overrides: Any) -> Experiment:
    """A small experiment of `trainer` (the LoRA base path is never opened by the tests using this)."""
    if trainer == "lora":
        return lora_experiment(Path("/no/base/needed"), cache, **overrides)
    if trainer == "vae":
        from test_vae_trainer import vae_experiment

        return vae_experiment(cache, **overrides)
    return experiment(TINY_BASE_CONFIG, cache, **overrides)


@pytest.mark.parametrize("trainer", ["lora", "vae", "full"])
def test_half_precision_on_cpu_is_refused(trainer: str, catsith_cache: Path, tmp_path: Path) -> None:
    """Every trainer honours train.mixed_precision (the full trainer used to ignore it)."""
    for precision in ("fp16", "bf16"):
        exp = _any_experiment(trainer, catsith_cache, train={"mixed_precision": precision, "device": "cpu"})
        with pytest.raises(RuntimeError, match=f"mixed_precision={precision} needs a CUDA device"):
            make_trainer(exp, tmp_path).setup()


@pytest.mark.parametrize("trainer,refused", [("lora", "onnx"), ("vae", "peft_safetensors"), ("full", "onnx")])
def test_export_formats_are_refused_before_training(trainer: str, refused: str, catsith_cache: Path,
                                                    tmp_path: Path) -> None:
    """A format the trainer cannot write stops `setup`, not the export after the whole budget (LoRA
    used to drop it silently)."""
    exp = _any_experiment(trainer, catsith_cache, export={"formats": [refused]})
    with pytest.raises(ConfigError, match=f"trainer `{trainer}` cannot write {refused}"):
        make_trainer(exp, tmp_path).setup()


def test_runtime_follows_the_train_section(catsith_cache: Path) -> None:
    exp = _any_experiment("vae", catsith_cache, train={"num_threads": 1, "seed": 5, "device": "cpu"})
    first, second = R.start_runtime(exp), R.start_runtime(exp)
    assert torch.get_num_threads() == 1
    assert first.device.type == "cpu" and first.dtype == torch.float32 and not first.scaler.is_enabled()
    draws = [torch.randint(0, 1000, (5,), generator=g).tolist() for g in (first.generator, second.generator)]
    assert draws[0] == draws[1]  # seeded from train.seed: trials repeat
    other = R.start_runtime(_any_experiment("vae", catsith_cache, train={"num_threads": 1, "seed": 6}))
    assert torch.randint(0, 1000, (5,), generator=other.generator).tolist() != draws[0]
    threads = R.start_runtime(_any_experiment("vae", catsith_cache, train={"num_threads": None},
                                              resources={"cpu": 2}))
    assert torch.get_num_threads() == 2 and threads.device.type in ("cpu", "cuda")
    torch.set_num_threads(1)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="train.device is `cuda`, but no CUDA device"):
            R.start_runtime(_any_experiment("vae", catsith_cache, train={"device": "cuda"}))
        assert R.start_runtime(_any_experiment("vae", catsith_cache, train={"device": "auto"})).device.type == "cpu"


@pytest.mark.parametrize("targets,message", [
    (["proj_in"], "only LoRA on Linear layers can be exported"),  # a Conv2d in this UNet
    (["no_such_module"], "no_such_module"),
])
def test_lora_targets_are_refused_at_setup(tiny_base: Path, catsith_cache: Path, tmp_path: Path,
                                           targets: list[str], message: str) -> None:
    from catsith_sweep.errors import ConfigError

    exp = lora_experiment(tiny_base, catsith_cache, lora={"target_modules": targets})
    with pytest.raises(ConfigError, match=message) as info:
        LoraTrainer(exp, tmp_path).setup()
    assert str(info.value).startswith(f"lora.target_modules {targets}:")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lora_on_cuda_mixed_precision(tiny_base: Path, catsith_cache: Path, tmp_path: Path) -> None:
    exp = lora_experiment(tiny_base, catsith_cache, train={"device": "auto", "mixed_precision": "auto"})
    trainer = LoraTrainer(exp, tmp_path)
    trainer.setup()
    assert trainer.rt.device.type == "cuda" and trainer.rt.dtype in (torch.bfloat16, torch.float16)
    before = _trainable(trainer)
    metrics = trainer.train(2, _quiet)
    assert trainer.step == 2 and torch.isfinite(torch.tensor(metrics["loss"]))
    after = _trainable(trainer)
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in after.values())
    assert any(not torch.equal(before[k], v) for k, v in after.items())


def _epochs_experiment(trainer: str, base: Path, cache: Path) -> Experiment:
    # 44 training sprites (of 61; 17 held out): LoRA 2 steps per epoch (batches of 16, 2 to a step), 2
    # epochs; the full trainer 3 VAE steps, then 1 step per epoch (batches of 32, 2 to a step).
    train = {"max_steps": None, "epochs": 2, "batch_size": 16, "gradient_accumulation_steps": 2}
    if trainer == "lora":
        return lora_experiment(base, cache, train=train, eval={"every_n_steps": 3})
    return experiment(TINY_BASE_CONFIG, cache, train={**train, "batch_size": 32},
                      full={"vae_steps": 3, "vae_batch_size": 4}, eval={"every_n_steps": 2})


@pytest.mark.parametrize("trainer", ["lora", "full"])
def test_epoch_budget_is_what_the_sweep_plans(trainer: str, tiny_base: Path, catsith_cache: Path,
                                              tmp_path: Path) -> None:
    """The sweep sizes its scheduler with `planned_budget` before any trial runs; a trial must take
    exactly those steps and report exactly those evaluations (the driver used to assume 10)."""
    exp = _epochs_experiment(trainer, tiny_base, catsith_cache)
    steps, evaluations = planned_budget(exp)
    assert (steps, evaluations) == ({"lora": 4, "full": 5}[trainer], 2 if trainer == "lora" else 3)
    reports: list[Report] = []
    trainer_obj = make_trainer(exp, tmp_path)
    run_trial(trainer_obj, exp, tmp_path, reports.append)
    assert trainer_obj.step == trainer_obj.total_steps() == steps
    evals = [r for r in reports if r.checkpoint is not None]
    assert len(evals) == evaluations and evals[-1].step == steps
    reported = set().union(*(r.metrics for r in evals))
    assert reported == set(trainer_obj.surface.metric_names(exp))  # the full trainer's two phases together


def test_full_trainer_accumulates_micro_batches(catsith_cache: Path, tmp_path: Path) -> None:
    """With accumulation 2, a step of each phase draws the micro-batches two steps without it draw
    (the full trainer used to ignore train.gradient_accumulation_steps)."""
    def run(accumulation: int, vae_steps: int, steps: int) -> tuple[FullTrainer, torch.Tensor]:
        exp = experiment(TINY_BASE_CONFIG, catsith_cache,
                         train={"batch_size": 4, "gradient_accumulation_steps": accumulation},
                         full={"vae_steps": vae_steps, "vae_batch_size": 4})
        trainer = FullTrainer(exp, tmp_path / f"accumulate{accumulation}")
        trainer.setup()
        trainer.train(steps, _quiet)
        return trainer, torch.get_rng_state()

    accumulated, global_rng = run(2, 1, 2)  # one VAE step, one UNet step, 2 micro-batches each
    plain, plain_global_rng = run(1, 2, 4)  # two VAE steps, two UNet steps
    assert torch.equal(accumulated.rt.generator.get_state(), plain.rt.generator.get_state())
    assert torch.equal(global_rng, plain_global_rng)  # the VAE's posterior samples


def test_full_trainer_gradient_checkpointing_changes_memory_not_results(catsith_cache: Path,
                                                                          tmp_path: Path) -> None:
    def run(checkpointing: bool) -> FullTrainer:
        exp = experiment(TINY_BASE_CONFIG, catsith_cache, train={"batch_size": 4, "gradient_checkpointing":
                                                                 checkpointing}, full={"vae_steps": 1,
                                                                                       "vae_batch_size": 4})
        trainer = FullTrainer(exp, tmp_path / str(checkpointing))
        trainer.setup()
        trainer.train(2, _quiet)
        return trainer

    plain, checkpointed = run(False), run(True)
    assert checkpointed.parts.unet.is_gradient_checkpointing and checkpointed.parts.vae.is_gradient_checkpointing
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.parts.text_encoder.modules())
    assert not plain.parts.unet.is_gradient_checkpointing
    for name, want in _all_weights(plain).items():
        torch.testing.assert_close(_all_weights(checkpointed)[name], want, rtol=0, atol=1e-6, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_full_trainer_on_cuda_mixed_precision(catsith_cache: Path, tmp_path: Path) -> None:
    exp = experiment(TINY_BASE_CONFIG, catsith_cache, train={"device": "auto", "mixed_precision": "auto",
                                                             "gradient_accumulation_steps": 2, "batch_size": 4},
                     full={"vae_steps": 2, "vae_batch_size": 4})
    trainer = FullTrainer(exp, tmp_path)
    trainer.setup()
    assert trainer.rt.device.type == "cuda" and trainer.rt.dtype in (torch.bfloat16, torch.float16)
    before = _all_weights(trainer)
    metrics = trainer.train(4, _quiet)  # both phases
    assert trainer.step == 4 and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    after = _all_weights(trainer)
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in after.values())
    assert any(not torch.equal(before[k], v) for k, v in after.items() if k.startswith("unet."))


# ---- held-out evaluation -----------------------------------------------------------------------
def _rows(images: torch.Tensor) -> set[bytes]:
    """Each sprite's pixels as bytes (uint8 RGBA), to compare sets of images exactly."""
    return {(image * 255).round().byte().numpy().tobytes() for image in images}


def _diffusion_experiment(trainer: str, base: Path, cache: Path, **overrides: Any) -> Experiment:
    if trainer == "full":
        overrides = {"full": {"vae_steps": 2, "vae_batch_size": 8}, **overrides}
        return experiment(TINY_BASE_CONFIG, cache, train={"batch_size": 8}, **overrides)
    return lora_experiment(base, cache, **overrides)


@pytest.mark.parametrize("trainer,overrides", [
    ("lora", {}),  # cached latents
    ("lora", {"data": {"cache_latents": False}}),  # encodes every batch
    # VAE phase, latent cache, UNet phase; without the VAE phase's recolouring and turns, so the
    # sprites it draws can be matched byte for byte
    ("full", {"full": {"vae_steps": 2, "vae_batch_size": 8, "vae_recolour": 0.0, "vae_turns": False}}),
], ids=["lora-cached", "lora-uncached", "full"])
def test_no_heldout_sprite_is_trained_on(trainer: str, overrides: dict[str, Any], tiny_base: Path,
                                         catsith_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sprite a trainer turns into VAE input while training (what it learns from: batches,
    latent caches) is a training-split sprite; none of a held-out entity."""
    from catsith_sweep.trainers import diffusion as D

    seen: list[torch.Tensor] = []
    real_pixels = D.to_vae_pixels

    def spy(images: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(images.detach().clone())
        return real_pixels(images, *args, **kwargs)

    monkeypatch.setattr(D, "to_vae_pixels", spy)
    exp = _diffusion_experiment(trainer, tiny_base, catsith_cache, **overrides)
    trained: Any = make_trainer(exp, tmp_path)
    trained.setup()
    trained.train(4, _quiet)
    split, images = trained.split, trained.dataset.images
    heldout, train = _rows(images[split.heldout]), _rows(images[split.train])
    assert len(split.heldout) == 17 and not heldout & train  # distinct designs: the check can fail
    drawn = _rows(torch.cat(seen))
    assert drawn and not drawn & heldout
    assert drawn <= train
    if trainer == "full" or not overrides:  # a latent cache encodes the whole training split
        assert drawn == train


def test_lora_evaluation_scores_heldout_sprites_with_a_net_that_never_saw_them(
        tiny_base: Path, catsith_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from catsith_sweep.metrics import scores
    from catsith_sweep.models import sprite_net as sprite_net_module

    calls: dict[str, Any] = {}
    real_metrics, real_kind, real_net = (scores.compute_image_metrics, scores.kind_accuracy,
                                         sprite_net_module.sprite_net_for_dataset)

    def metrics_spy(real: torch.Tensor, fake: torch.Tensor, **kwargs: Any) -> dict[str, float]:
        calls["real"], calls["fake"] = real, fake
        return real_metrics(real, fake, **kwargs)

    def kind_spy(net: Any, fake: torch.Tensor, labels: torch.Tensor) -> float:
        calls["kinds"] = labels
        return real_kind(net, fake, labels)

    def net_spy(*args: Any, train_indices: Any = None, **kwargs: Any) -> Any:
        calls["net_indices"] = list(train_indices) if train_indices is not None else None
        calls["net"] = real_net(*args, train_indices=train_indices, **kwargs)
        return calls["net"]

    monkeypatch.setattr(scores, "compute_image_metrics", metrics_spy)
    monkeypatch.setattr(scores, "kind_accuracy", kind_spy)
    monkeypatch.setattr(sprite_net_module, "sprite_net_for_dataset", net_spy)
    trainer = LoraTrainer(lora_experiment(tiny_base, catsith_cache), tmp_path)
    trainer.setup()
    evaluation = trainer.evaluate(tmp_path / "eval")
    split, dataset = trainer.split, trainer.dataset

    # The reference set is exactly the held-out sprites; the samples are drawn for held-out captions.
    assert torch.equal(calls["real"], dataset.images[split.heldout]) and len(calls["real"]) == 17
    assert len(calls["fake"]) == trainer.exp.eval.num_metric_samples
    heldout_kinds = sorted({int(dataset.kinds[i]) for i in split.heldout})
    assert set(calls["kinds"].tolist()) <= set(heldout_kinds)
    # The sprite net was trained on the training split only (its cache entry names that split).
    assert calls["net_indices"] == split.train
    net = calls["net"]
    names = [dataset.names[i] for i in split.train]
    assert net.config.training["training_set"] == sprite_net_module.training_set_key(names)
    assert net.config.training["images"] == len(split.train)
    assert set(evaluation.metrics) == {m for m in LoraTrainer.surface.metric_names(trainer.exp)
                                       if m not in ("loss", "lr")}


def test_a_split_too_small_to_measure_is_refused_at_setup(catsith_cache: Path, tmp_path: Path) -> None:
    """Refused (exit 2: a DatasetError), naming the numbers, before any model is loaded (the LoRA
    experiment's base does not even exist)."""
    from catsith_sweep.errors import DatasetError

    for trainer in ("lora", "full", "vae"):
        exp = _any_experiment(trainer, catsith_cache, data={"val_fraction": 0.0})
        with pytest.raises(DatasetError, match="holds out 0 of 19 entities, 0 of 61 images; held-out metrics "
                                               "need at least 8"):
            make_trainer(exp, tmp_path).setup()
