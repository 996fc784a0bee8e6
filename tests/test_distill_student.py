"""BK-SDM-style students: block removal, weights from the teacher, and a config that reloads exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from catsith_sweep.models.builtin import UNET_CONFIG
from catsith_sweep.models.student import LEVELS, build_student, count_params, plan_student

SD_LIKE = {**UNET_CONFIG, "layers_per_block": 2, "block_out_channels": [32, 48, 64, 64]}


def _teacher(config: dict) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    teacher = UNet2DConditionModel(**config)
    with torch.no_grad():
        for p in teacher.parameters():  # distinct values everywhere, so a wrong mapping cannot match
            p.normal_(std=0.05)
    return teacher.eval()


@pytest.mark.parametrize("config", [UNET_CONFIG, SD_LIKE], ids=["builtin", "two-pairs"])
@pytest.mark.parametrize("level", LEVELS)
def test_every_student_weight_comes_from_its_teacher(config: dict, level: str) -> None:
    teacher = _teacher(config)
    student, plan = build_student(teacher, level)  # type: ignore[arg-type]
    teacher_state = teacher.state_dict()
    for key, value in student.state_dict().items():
        source = teacher_state[plan.teacher_key(key)]
        if key in plan.sliced:
            below, teacher_below, _ = plan.sliced[key]
            dim = 1 if source.dim() > 1 else 0
            source = torch.cat([source.narrow(dim, 0, below),
                                source.narrow(dim, teacher_below, source.shape[dim] - teacher_below)], dim)
        assert torch.equal(value, source), key
    assert count_params(student) < count_params(teacher)


def test_levels_remove_what_they_say() -> None:
    small, tiny, micro = (plan_student(UNET_CONFIG, level) for level in LEVELS)
    assert small.config["mid_block_type"] is None
    assert small.config["down_block_types"] == UNET_CONFIG["down_block_types"]
    first = UNET_CONFIG["down_block_types"].index("CrossAttnDownBlock2D")  # the outermost stage with attention
    assert tiny.config["down_block_types"][first] == "DownBlock2D"
    assert tiny.config["up_block_types"][len(UNET_CONFIG["up_block_types"]) - 1 - first] == "UpBlock2D"
    assert tiny.config["down_block_types"].count("CrossAttnDownBlock2D") == \
        UNET_CONFIG["down_block_types"].count("CrossAttnDownBlock2D") - 1
    assert micro.config["block_out_channels"] == UNET_CONFIG["block_out_channels"][:-1]
    assert micro.up_offset == 1 and micro.sliced  # builtin: 128 -> 96 channels at the new innermost stage
    two_pairs = plan_student(SD_LIKE, "small")
    assert two_pairs.config["layers_per_block"] == 1
    assert two_pairs.teacher_key("up_blocks.1.resnets.1.conv1.weight") == "up_blocks.1.resnets.2.conv1.weight"
    assert plan_student(SD_LIKE, "micro").sliced == {}  # equal inner widths: exact copies, as BK-SDM Tiny


def test_unknown_level_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="small, tiny, micro.*'nano'"):
        plan_student(UNET_CONFIG, "nano")  # type: ignore[arg-type]


@pytest.mark.parametrize("level", LEVELS)
def test_saved_student_reloads_exactly(tmp_path: Path, level: str) -> None:
    from diffusers import UNet2DConditionModel

    student, _ = build_student(_teacher(UNET_CONFIG), level)  # type: ignore[arg-type]
    student.save_pretrained(tmp_path, safe_serialization=True)
    reloaded, info = UNet2DConditionModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    sample = torch.randn(1, UNET_CONFIG["in_channels"], 16, 16)
    encoder = torch.randn(1, 8, UNET_CONFIG["cross_attention_dim"])
    with torch.no_grad():
        assert torch.equal(student(sample, 10, encoder).sample, reloaded.eval()(sample, 10, encoder).sample)
