"""Distillation loss terms: hooks on matched blocks, per-term normalisation, the x̂0 the predictions imply."""

from __future__ import annotations

import pytest
import torch

from catsith_sweep.models.builtin import UNET_CONFIG, make_scheduler
from catsith_sweep.models.student import LEVELS, build_student, feature_pairs
from catsith_sweep.trainers.distill_loss import (
    LossNormalizer,
    LossWeights,
    combine,
    feature_loss,
    predicted_x0,
    tap_blocks,
)


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, UNET_CONFIG["in_channels"], 8, 8, generator=g), torch.tensor([10, 500]),
            torch.randn(2, 6, UNET_CONFIG["cross_attention_dim"], generator=g))


@pytest.mark.parametrize("level", LEVELS)
def test_matched_blocks_have_equal_shapes_and_a_copy_starts_at_zero(level: str) -> None:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    teacher = UNet2DConditionModel(**UNET_CONFIG).eval()
    student, plan = build_student(teacher, level)  # type: ignore[arg-type]
    pairs = feature_pairs(plan, len(student.down_blocks), len(student.up_blocks))
    sample, t, enc = _inputs()
    with tap_blocks(student, [s for s, _ in pairs], pairs=plan.student_lpb, detach=False) as fs, \
            tap_blocks(teacher, [t_ for _, t_ in pairs], pairs=plan.teacher_lpb, detach=True) as ft:
        student(sample, t, enc)
        with torch.no_grad():
            teacher(sample, t, enc)
    assert set(fs) == {s for s, _ in pairs} and set(ft) == {t_ for _, t_ in pairs}
    loss = feature_loss(fs, ft, pairs)
    assert loss.item() > 0 and loss.requires_grad
    # A down block copied whole (the first, without attention, at every level) gives the teacher's
    # features exactly; the first attention stage loses its attention from `tiny` on, and so differs.
    attention_stage = f"down_blocks.{UNET_CONFIG['down_block_types'].index('CrossAttnDownBlock2D')}"
    assert torch.equal(fs["down_blocks.0"], ft["down_blocks.0"])
    assert torch.equal(fs[attention_stage], ft[attention_stage]) == (level == "small")
    assert feature_loss(fs, fs, [(s, s) for s, _ in pairs]).item() == 0.0
    student(sample, t, enc)  # hooks are gone once the context closes
    assert set(fs) == {s for s, _ in pairs}


def test_unknown_block_names_list_what_the_unet_has() -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(**UNET_CONFIG)
    with pytest.raises(KeyError, match="up_blocks.7.*down_blocks.0"), \
            tap_blocks(unet, ["up_blocks.7"], pairs=1, detach=True):
        pass


def test_normalizer_divides_by_first_values_and_restores() -> None:
    norm = LossNormalizer(enabled=True)
    first = norm({"task": torch.tensor(2.0), "feature": torch.tensor(400.0)})
    assert {k: float(v) for k, v in first.items()} == {"task": 1.0, "feature": 1.0}
    later = norm({"task": torch.tensor(1.0), "feature": torch.tensor(100.0)})
    assert {k: float(v) for k, v in later.items()} == {"task": 0.5, "feature": 0.25}
    again = LossNormalizer(enabled=True)
    again.load_state_dict(norm.state_dict())
    assert float(again({"feature": torch.tensor(200.0)})["feature"]) == 0.5
    raw = LossNormalizer(enabled=False)({"feature": torch.tensor(400.0)})
    assert float(raw["feature"]) == 400.0


def test_combine_weights_terms_and_logs_raw_values() -> None:
    terms = {"task": torch.tensor(2.0), "output": torch.tensor(3.0), "feature": torch.tensor(10.0)}
    loss, logged = combine(terms, LossWeights(task=1.0, output=0.5, feature=0.1), LossNormalizer(enabled=False))
    assert float(loss) == pytest.approx(2.0 + 1.5 + 1.0)
    assert logged == {"loss_task": 2.0, "loss_output": 3.0, "loss_feature": 10.0}


def test_predicted_x0_inverts_the_forward_noising() -> None:
    scheduler = make_scheduler()
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([1, 400, 900])
    noisy = scheduler.add_noise(x0, noise, t)
    assert torch.allclose(predicted_x0(noisy, noise, scheduler.alphas_cumprod, t), x0, atol=1e-3)
