"""Distillation students: a teacher's UNet with blocks removed, weights copied from the teacher by name.

BK-SDM (arXiv 2305.15798) builds its students from the teacher's config: fewer resnet/attention pairs
per stage, then no mid block, then no innermost stage; each kept block starts from the teacher's
weights. The builtin base is already down to one pair per stage, so the levels below are cumulative
removals that apply to any diffusers `UNet2DConditionModel` and say which steps did nothing:

| level   | removes (on top of the level before)                                                  |
|---------|---------------------------------------------------------------------------------------|
| `small` | one resnet/attention pair per stage where a stage has two or more (BK-SDM Base), and   |
|         | the mid block (BK-SDM Small)                                                           |
| `tiny`  | the attention of the highest-resolution stage that has any (down and up): on the       |
|         | builtin UNet it is the most expensive part, and the lower stages keep the text         |
|         | conditioning                                                                           |
| `micro` | the innermost stage (BK-SDM Tiny); the block above it loses its down-sampler           |

Weights map as BK-SDM's do: a down stage keeps its first pairs, an up stage its first and last pairs; with
the innermost stage gone, teacher up block `i + 1` becomes student up block `i`. Where the innermost
stage was wider than the one above it (the builtin: 128 vs 96 channels), the first resnet of the new
innermost up block sees fewer input channels than its teacher: it takes the teacher's weights for the
channels that remain (the first ones from below, and all of the skip connection), which `StudentPlan.
sliced` lists. Everything else is an exact copy, which `tests/test_distill_student.py` checks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

StudentLevel = Literal["small", "tiny", "micro"]
LEVELS: tuple[StudentLevel, ...] = ("small", "tiny", "micro")
_PLAIN = {"CrossAttnDownBlock2D": "DownBlock2D", "CrossAttnUpBlock2D": "UpBlock2D"}
# Per-block config entries that follow the down blocks' order (up blocks read them reversed).
_PER_BLOCK_KEYS = ("layers_per_block", "transformer_layers_per_block", "attention_head_dim",
                   "num_attention_heads", "cross_attention_dim", "only_cross_attention")


@dataclass(frozen=True)
class StudentPlan:
    """How a student is made from its teacher: its UNet config and where each of its weights comes from."""

    level: StudentLevel
    config: dict[str, Any]
    """The student's UNet config (what its saved `config.json` holds)."""
    removed: tuple[str, ...]
    """What was removed, in words, in order; a step that did not apply says so."""
    teacher_lpb: int
    student_lpb: int
    up_offset: int
    """1 when the innermost stage was removed (teacher up block i + 1 is student up block i)."""
    sliced: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """Student weight -> (student input channels from below, teacher's, skip channels), for weights that
    keep a subset of the teacher's input channels."""

    def teacher_key(self, student_key: str) -> str:
        """The teacher weight a student weight is copied from."""
        down = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", student_key)
        if down:
            return student_key  # down stages keep their first pairs: same index
        up = re.match(r"up_blocks\.(\d+)\.(.*)", student_key)
        if not up:
            return student_key
        block, rest = int(up.group(1)) + self.up_offset, up.group(2)
        pair = re.match(r"(resnets|attentions)\.(\d+)\.(.*)", rest)
        if pair:
            index = int(pair.group(2))
            if index == self.student_lpb:  # the last pair of an up stage comes from the teacher's last
                index = self.teacher_lpb
            rest = f"{pair.group(1)}.{index}.{pair.group(3)}"
        return f"up_blocks.{block}.{rest}"


def _lpb(config: Mapping[str, Any]) -> int:
    value = config["layers_per_block"]
    if not isinstance(value, int):
        raise ValueError(f"students need one `layers_per_block` for every stage, but the teacher has {value!r}")
    return value


def plan_student(teacher_config: Mapping[str, Any], level: StudentLevel) -> StudentPlan:
    """The student of `level` for a teacher UNet config (a `UNet2DConditionModel.config`)."""
    if level not in LEVELS:
        raise ValueError(f"`distill.level` must be one of {', '.join(LEVELS)}, but got {level!r}")
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in teacher_config.items()
              if not k.startswith("_")}
    teacher_lpb = _lpb(config)
    removed: list[str] = []
    student_lpb = teacher_lpb - 1 if teacher_lpb >= 2 else teacher_lpb
    config["layers_per_block"] = student_lpb
    removed.append(f"pairs per stage {teacher_lpb} -> {student_lpb}" if student_lpb < teacher_lpb
                   else f"pairs per stage: already {teacher_lpb}, kept")
    if config.get("mid_block_type") is None:
        removed.append("mid block: the teacher has none")
    else:
        removed.append(f"mid block ({config['mid_block_type']})")
    config["mid_block_type"] = None
    up_offset = 0
    if level in ("tiny", "micro"):
        removed.append(_remove_outer_attention(config))
    if level == "micro":
        removed.append(_remove_innermost_stage(config))
        up_offset = 1
    plan = StudentPlan(level=level, config=config, removed=tuple(removed), teacher_lpb=teacher_lpb,
                       student_lpb=student_lpb, up_offset=up_offset)
    if up_offset:
        _note_sliced(plan, teacher_config)
    return plan


def _remove_outer_attention(config: dict[str, Any]) -> str:
    """Plain resnet blocks where the highest-resolution stage with attention had cross-attention blocks
    (down stage i and its mirror, up stage n - 1 - i)."""
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    stage = next((i for i, kind in enumerate(down) if kind in _PLAIN), None)
    if stage is None:
        return "outer-stage attention: the teacher has none"
    mirror = len(up) - 1 - stage
    down[stage], up[mirror] = _PLAIN[down[stage]], _PLAIN.get(up[mirror], up[mirror])
    config["down_block_types"], config["up_block_types"] = down, up
    return f"attention of the highest-resolution attention stage ({config['block_out_channels'][stage]} channels)"


def _remove_innermost_stage(config: dict[str, Any]) -> str:
    if len(config["block_out_channels"]) < 2:
        raise ValueError("`distill.level: micro` removes the innermost stage, but the teacher has only one")
    width = config["block_out_channels"][-1]
    config["down_block_types"] = list(config["down_block_types"])[:-1]
    config["up_block_types"] = list(config["up_block_types"])[1:]
    config["block_out_channels"] = list(config["block_out_channels"])[:-1]
    for key in _PER_BLOCK_KEYS:
        if isinstance(config.get(key), list):
            config[key] = config[key][:-1]
    return f"innermost stage ({width} channels)"


def _note_sliced(plan: StudentPlan, teacher_config: Mapping[str, Any]) -> None:
    teacher_width, student_width = teacher_config["block_out_channels"][-1], plan.config["block_out_channels"][-1]
    if teacher_width == student_width:
        return
    prefix = "up_blocks.0.resnets.0."
    for name in ("norm1.weight", "norm1.bias", "conv1.weight", "conv_shortcut.weight"):
        plan.sliced[prefix + name] = (student_width, teacher_width, student_width)


def _take_channels(tensor: Any, dim: int, below: int, teacher_below: int) -> Any:
    import torch

    kept_from_below = tensor.narrow(dim, 0, below)
    skip = tensor.narrow(dim, teacher_below, tensor.shape[dim] - teacher_below)
    return torch.cat([kept_from_below, skip], dim=dim)


def build_student(teacher_unet: Any, level: StudentLevel) -> tuple[Any, StudentPlan]:
    """A new `UNet2DConditionModel` of `level`, every weight taken from `teacher_unet` (see module doc)."""
    from diffusers import UNet2DConditionModel

    plan = plan_student(dict(teacher_unet.config), level)
    student = UNet2DConditionModel.from_config(plan.config)
    teacher_state = teacher_unet.state_dict()
    new_state = {}
    for key, target in student.state_dict().items():
        source = teacher_state[plan.teacher_key(key)]
        if key in plan.sliced:
            below, teacher_below, _ = plan.sliced[key]
            source = _take_channels(source, 1 if source.dim() > 1 else 0, below, teacher_below)
        if tuple(source.shape) != tuple(target.shape):
            raise ValueError(f"student weight {key} {tuple(target.shape)} does not match teacher weight "
                             f"{plan.teacher_key(key)} {tuple(source.shape)}")
        new_state[key] = source.detach().clone()
    student.load_state_dict(new_state, strict=True)
    if (teacher_unet.device.type, str(teacher_unet.dtype)) != ("cpu", "torch.float32"):
        student = student.to(device=teacher_unet.device, dtype=teacher_unet.dtype)
    return student, plan


def feature_pairs(plan: StudentPlan, num_student_down: int, num_student_up: int) -> list[tuple[str, str]]:
    """Matched (student module, teacher module) names whose outputs the feature loss compares: every
    down and up block, as BK-SDM does (the mid block is not matched). Down blocks are compared on the
    output of their last kept pair (before any down-sampler, which a student's last stage may lack)."""
    pairs = [(f"down_blocks.{i}", f"down_blocks.{i}") for i in range(num_student_down)]
    pairs += [(f"up_blocks.{i}", f"up_blocks.{i + plan.up_offset}") for i in range(num_student_up)]
    return pairs


def count_params(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())
