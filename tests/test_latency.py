"""Latency measurement: medians of interleaved runs, and the sampling loop that is timed."""

from __future__ import annotations

import time

import pytest
import torch

from catsith_sweep.trainers.latency import interleaved_medians, measure_latency, sampling_loop


def test_ratio_of_sleeping_models_is_their_speed_ratio() -> None:
    runners = {"teacher": lambda: time.sleep(0.020), "student": lambda: time.sleep(0.010)}
    medians = interleaved_medians(runners, repeats=5)
    assert medians["teacher"] >= 20.0 and medians["student"] >= 10.0
    assert medians["student"] / medians["teacher"] == pytest.approx(0.5, abs=0.15)


def test_rounds_alternate_order_and_warmup_is_untimed() -> None:
    calls: list[str] = []
    ticks = iter(range(1000))
    medians = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                  repeats=4, warmup=1, clock=lambda: float(next(ticks)))
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then A B, B A, A B, B A
    assert medians == {"a": 1000.0, "b": 1000.0}  # one tick per timed call, in ms


def test_an_outlier_does_not_move_the_median() -> None:
    durations = iter([0.0, 0.0] + [0.005, 0.010] * 2 + [0.200, 0.010] + [0.005, 0.010] * 2)
    runners = {"s": lambda: time.sleep(next(durations)), "t": lambda: time.sleep(next(durations))}
    # rounds: (s, t), (t, s), ... : the 200 ms burst lands on one call of one runner
    medians = interleaved_medians(runners, repeats=5)
    assert medians["s"] < 50.0 and medians["t"] < 50.0


def test_repeats_must_be_positive() -> None:
    with pytest.raises(ValueError, match="repeats must be at least 1, but got 0"):
        interleaved_medians({"a": lambda: None}, repeats=0)


def test_sampling_loop_matches_the_diffusers_pipeline_and_micro_is_faster() -> None:
    from catsith_sweep.models.builtin import build_untrained, to_pipeline
    from catsith_sweep.models.student import build_student

    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = build_untrained(["a red fighter ship facing up"])
    prompt, device = "a red fighter ship facing up", torch.device("cpu")
    ours = sampling_loop(teacher, prompt, steps=3, guidance_scale=4.0, resolution=64, device=device, seed=7)
    side = 64 // 2 ** (len(teacher.vae.config.block_out_channels) - 1)
    latents = torch.randn(1, teacher.unet.config.in_channels, side, side, generator=torch.Generator().manual_seed(7))
    pipe = to_pipeline(teacher)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompt, latents=latents, num_inference_steps=3, guidance_scale=4.0, height=64, width=64,
                  output_type="latent").images
    decoded = teacher.vae.decode(theirs / teacher.vae.config.scaling_factor).sample
    assert torch.allclose(ours, decoded, atol=1e-5)  # the timed work is the real sampler's work

    student = build_untrained(["a red fighter ship facing up"])
    student.unet, _ = build_student(teacher.unet, "micro")
    student.text_encoder, student.vae, student.tokenizer = teacher.text_encoder, teacher.vae, teacher.tokenizer
    found = measure_latency(teacher, student, prompt=prompt, steps=3, guidance_scale=4.0, resolution=64,
                            device=device, repeats=3)
    assert set(found) == {"latency_ms", "teacher_latency_ms", "latency_ratio"}
    assert found["latency_ratio"] == pytest.approx(found["latency_ms"] / found["teacher_latency_ms"])
    assert 0 < found["latency_ratio"] < 1
