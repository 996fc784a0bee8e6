"""The distillation loss: BK-SDM's three terms, the guide's perceptual term, and per-term normalisation.

    loss = task_weight · MSE(ε_s, ε) + output_weight · MSE(ε_s, ε_t) + feature_weight · Σ_blocks MSE(f_s, f_t)
           + perceptual_weight · MSE(φ(x̂0_s), φ(x̂0_t))

ε is the noise added, ε_s / ε_t the student's / teacher's predictions, f the matched block outputs
(forward hooks; teacher detached), x̂0 the clean latent each prediction implies, decoded by the frozen VAE,
and φ the sprite feature network (the guide uses VGG, which cannot be downloaded here).

BK-SDM's users report that the feature term dwarfs the others. With `normalize_losses`, each term is
divided by its value at the first step (kept in the checkpoint), so the weights compare like with like.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

TERMS = ("task", "output", "feature", "perceptual")


@dataclass(frozen=True)
class LossWeights:
    task: float = 1.0
    output: float = 1.0
    feature: float = 0.5
    perceptual: float = 0.1

    def of(self, term: str) -> float:
        return float(getattr(self, term))


def _block_feature(output: Any, pairs: int) -> torch.Tensor:
    """A down block returns (hidden, per-pair outputs + down-sampler output): take the output of its last
    pair, before any down-sampler (a student's new last stage has none). Up blocks return a tensor."""
    if isinstance(output, tuple):
        return output[1][pairs - 1]
    return output


@contextmanager
def tap_blocks(unet: torch.nn.Module, names: list[str], *, pairs: int, detach: bool
               ) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of `unet`'s blocks `names` (e.g. `down_blocks.0`) while the context is open.

    Hooks are found by module name on the unwrapped model, so a DDP/compile wrapper does not change them
    (BK-SDM's users hit `KeyError: 'up_blocks.0'` under DDP)."""
    model = getattr(unet, "module", unet)
    model = getattr(model, "_orig_mod", model)
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"UNet has no blocks {missing}; it has {sorted(n for n in modules if n.count('.') == 1)}")
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(_module: Any, _inputs: Any, output: Any, name: str = name) -> None:
            feature = _block_feature(output, pairs)
            captured[name] = feature.detach() if detach else feature
        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def feature_loss(student: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor],
                 pairs: list[tuple[str, str]]) -> torch.Tensor:
    """Σ over matched blocks of MSE(student, teacher), in float32 as BK-SDM computes it."""
    total = torch.zeros((), device=next(iter(student.values())).device)
    for s_name, t_name in pairs:
        s, t = student[s_name].float(), teacher[t_name].float()
        if s.shape != t.shape:
            raise ValueError(f"feature shapes differ: student {s_name} {tuple(s.shape)} vs teacher {t_name} "
                             f"{tuple(t.shape)}")
        total = total + F.mse_loss(s, t)
    return total


class LossNormalizer:
    """Divides each term by its value at the first step it sees (when enabled); state for checkpoints."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.scale: dict[str, float] = {}

    def __call__(self, terms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.enabled:
            return dict(terms)
        for name, value in terms.items():
            if name not in self.scale:
                # A term that starts at zero (a student identical there) keeps its raw scale.
                self.scale[name] = float(value.detach()) or 1.0
        return {name: value / self.scale[name] for name, value in terms.items()}

    def state_dict(self) -> dict[str, float]:
        return dict(self.scale)

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.scale = {k: float(v) for k, v in state.items()}


def combine(terms: Mapping[str, torch.Tensor], weights: LossWeights, normalizer: LossNormalizer
            ) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of the (normalised) terms, and each raw term as a float for logging."""
    scaled = normalizer(terms)
    loss = sum((weights.of(name) * value for name, value in scaled.items()), torch.zeros(()))
    logged = {f"loss_{name}": float(value.detach()) for name, value in terms.items()}
    return loss, logged


def predicted_x0(noisy: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor
                 ) -> torch.Tensor:
    """The clean latent an ε-prediction implies: (x_t − √(1−ᾱ) ε) / √ᾱ."""
    abar = alphas_cumprod.to(noisy.device)[timesteps].float().view(-1, 1, 1, 1)
    return (noisy - (1 - abar).sqrt() * eps) / abar.sqrt()
