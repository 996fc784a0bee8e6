"""Feature backends behind FID, KID and LPIPS.

`sprite` (the default, works offline): the sprite feature network of `models.sprite_net`, plugged into
torchmetrics' own FrechetInceptionDistance / KernelInceptionDistance as a custom feature module, plus
an LPIPS-style distance over its intermediate feature maps. Scores are named `sprite_fid`, ... so they
are never mistaken for the published Inception numbers.

`inception`: torchmetrics' official Inception-v3 FID/KID (2048 features) and AlexNet LPIPS. They need
torch-fidelity and torchvision (built for the installed torch) and their weights in the torch hub cache;
nothing here downloads: a missing piece is a UserInputError that says how to provide it.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from pathlib import Path
from typing import Literal

import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from catsith_sweep.errors import UserInputError
from catsith_sweep.models.sprite_net import SpriteFeatureExtractor, SpriteNet

FeatureBackend = Literal["sprite", "inception"]
BACKENDS: tuple[str, ...] = ("sprite", "inception")

# The files torch-fidelity and torchvision fetch with torch.hub.load_state_dict_from_url; found in the
# hub cache they are used without any network access.
INCEPTION_WEIGHTS = (
    "weights-inception-2015-12-05-6726825d.pth",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
)
ALEXNET_WEIGHTS = ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth")

_INSTALL_HINT = (
    "install them with `pip install 'catsith-sweep[official-metrics]'` in an environment whose torch build "
    "torchvision matches (the CPU torch wheel here has none), or use the offline `sprite` backend"
)


def backend_prefix(backend: FeatureBackend) -> str:
    """Metric-name prefix that says which extractor produced a score: 'sprite_' or ''."""
    return "sprite_" if backend == "sprite" else ""


def check_backend(backend: str) -> FeatureBackend:
    """Validate a backend name from a config; UserInputError lists the valid ones."""
    if backend == "sprite":
        return "sprite"
    if backend == "inception":
        return "inception"
    raise UserInputError(f"unknown metrics backend {backend!r}; choose one of: {', '.join(BACKENDS)}")


def hub_checkpoint_dir() -> Path:
    """Where torch.hub looks for cached weights (TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _import_problem(module: str) -> str | None:
    # find_spec first: a missing package must not be imported at all. An installed but mismatched
    # torchvision fails on import, which is reported rather than crashing the run.
    if importlib.util.find_spec(module) is None:
        return f"the `{module}` package is not installed"
    try:
        importlib.import_module(module)
    except Exception as exc:  # any import-time failure means the backend is unusable
        return f"the `{module}` package is installed but fails to import ({type(exc).__name__}: {exc})"
    return None


def official_metrics_problems(*, need_lpips: bool = True) -> list[str]:
    """Everything missing for the `inception` backend (empty when it can run offline)."""
    problems = [p for p in (_import_problem("torchvision"), _import_problem("torch_fidelity")) if p]
    if problems:
        return [f"{p}: {_INSTALL_HINT}" for p in problems]
    needed = [INCEPTION_WEIGHTS] + ([ALEXNET_WEIGHTS] if need_lpips else [])
    for name, url in needed:
        if not (hub_checkpoint_dir() / name).is_file():
            problems.append(
                f"weights {name} are not in the torch hub cache {hub_checkpoint_dir()}; nothing is downloaded"
                f" during a sweep: fetch {url} on a machine with network access and copy it there"
            )
    return problems


def require_official_metrics(*, need_lpips: bool = True) -> None:
    """Raise UserInputError naming every missing package or weight file of the `inception` backend."""
    problems = official_metrics_problems(need_lpips=need_lpips)
    if problems:
        raise UserInputError(problems, title="the `inception` metrics backend is not available:")


def _quiet_kid(**kwargs: object) -> KernelInceptionDistance:
    # KID warns on every construction that it keeps all features in memory; sprite sets are small.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        return KernelInceptionDistance(**kwargs)  # type: ignore[arg-type]


def make_fid(backend: FeatureBackend, net: SpriteNet | None = None) -> FrechetInceptionDistance:
    """FID metric of a backend; update it with float RGB images in [0, 1] (normalize=True)."""
    if backend == "inception":
        require_official_metrics(need_lpips=False)
        weights = str(hub_checkpoint_dir() / INCEPTION_WEIGHTS[0])
        return FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=weights)
    net = _need_net(net)
    size = net.config.image_size
    return FrechetInceptionDistance(
        feature=SpriteFeatureExtractor(net), normalize=True, input_img_size=(3, size, size)
    )


def make_kid(
    backend: FeatureBackend, net: SpriteNet | None = None, *, subset_size: int, subsets: int = 50
) -> KernelInceptionDistance:
    """KID metric of a backend; `subset_size` must not exceed either set's sample count."""
    if backend == "inception":
        require_official_metrics(need_lpips=False)
        return _quiet_kid(feature=2048, normalize=True, subset_size=subset_size, subsets=subsets)
    return _quiet_kid(
        feature=SpriteFeatureExtractor(_need_net(net)), normalize=True, subset_size=subset_size, subsets=subsets
    )


def _need_net(net: SpriteNet | None) -> SpriteNet:
    if net is None:
        raise ValueError("the `sprite` backend needs the sprite feature network (see sprite_net_for_dataset)")
    return net


def _unit_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # LPIPS's normalisation: each spatial position's channel vector scaled to unit length, so layers
    # with large activations do not dominate and only the pattern of activation counts.
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def sprite_lpips(net: SpriteNet, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS-style distance per image pair over the sprite net's feature maps, shape (N,).

    For every trunk block: unit-normalise the channels, square the difference, sum over channels,
    average over positions; then sum over blocks. Unlike LPIPS there are no learned per-channel weights
    (all 1). Identical inputs give exactly 0. Differentiable, so it can serve as a perceptual loss;
    the net is put in eval mode (BatchNorm must not use batch statistics).
    """
    if a.shape != b.shape:
        raise ValueError(f"LPIPS compares pairs: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    net.eval()
    maps_a = net.feature_maps(net.prepare(a))
    maps_b = net.feature_maps(net.prepare(b))
    total = torch.zeros(a.shape[0], device=maps_a[0].device)
    for fa, fb in zip(maps_a, maps_b, strict=True):
        total = total + (_unit_channels(fa) - _unit_channels(fb)).pow(2).sum(dim=1).mean(dim=(1, 2))
    return total


def inception_lpips(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Official LPIPS (AlexNet) per pair, shape (N,), for float RGB in [0, 1]."""
    require_official_metrics(need_lpips=True)
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True, reduction="none")
    return metric(a, b).flatten()
