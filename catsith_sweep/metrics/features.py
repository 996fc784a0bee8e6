"""Feature extractors behind the image metrics: the "sprite" backend and the official "inception" one.

- "sprite" (the default, always available): the dataset's sprite feature network
  (`models.sprite_net`). Its embedding replaces Inception's in FID/KID, its trunk's feature maps replace
  AlexNet's in LPIPS (`sprite_lpips`). Metrics are named `sprite_fid`, `sprite_kid`, `sprite_lpips`:
  their values are comparable only between runs that used the same sprite net (same dataset), never
  with published FID numbers.
- "inception": torchmetrics' official Inception-v3 FID/KID (2048 features) and AlexNet LPIPS, named
  `fid`, `kid`, `lpips`. They need torch-fidelity and torchvision (a build matching the installed torch)
  and their weights already in torch's hub cache: this module never downloads anything, it checks and
  raises `UserInputError` saying how to get them.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, cast

import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

from catsith_sweep.errors import UserInputError
from catsith_sweep.models.sprite_net import SpriteFeatureExtractor, SpriteNet

FeatureBackend = Literal["sprite", "inception"]
BACKENDS: tuple[FeatureBackend, ...] = ("sprite", "inception")

# The files torch-fidelity and torchvision would download into `torch.hub.get_dir()/checkpoints/`.
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
ALEXNET_WEIGHTS = "alexnet-owt-7be5be79.pth"

_INSTALL_HINT = (
    "install them with `pip install 'catsith-sweep[official-metrics]'` using torchvision/torch-fidelity "
    "builds that match your torch (for the CPU wheel: `pip install torchvision --index-url "
    "https://download.pytorch.org/whl/cpu`), or use eval.feature_extractor: sprite"
)


def check_backend(backend: str) -> FeatureBackend:
    """Return `backend` when it is a known feature extractor, else raise UserInputError."""
    if backend not in BACKENDS:
        raise UserInputError(f"unknown feature extractor {backend!r}; choose one of: {', '.join(BACKENDS)}")
    return cast(FeatureBackend, backend)


def backend_prefix(backend: str) -> str:
    """Prefix of the metric names of a backend: "sprite_" for sprite-net metrics, none for official."""
    return "sprite_" if check_backend(backend) == "sprite" else ""


@dataclass(frozen=True)
class OfficialWeights:
    """Paths of the cached official weights, checked to exist."""

    inception: Path
    alexnet: Path


def _importable(module: str) -> str | None:
    """None when `module` imports cleanly, else why not (a mismatched torchvision fails on import)."""
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed"
    try:
        importlib.import_module(module)
    except Exception as exc:  # any import-time failure (ABI mismatch, missing ops) means unusable
        return f"{module} is installed but fails to import ({type(exc).__name__}: {exc})"
    return None


def require_official_metrics() -> OfficialWeights:
    """Check that the official Inception FID/KID and AlexNet LPIPS can run offline; raise otherwise.

    Packages are checked before anything imports them for real use, and weights must already be in
    torch's hub cache (`$TORCH_HOME/hub/checkpoints`), so nothing is ever downloaded. Every missing
    piece is listed in one UserInputError.
    """
    problems = [p for p in (_importable("torchvision"), _importable("torch_fidelity")) if p]
    if problems:
        problems.append(_INSTALL_HINT)
        raise UserInputError(problems, title="eval.feature_extractor: inception is not available here:")
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    weights = OfficialWeights(checkpoints / INCEPTION_WEIGHTS, checkpoints / ALEXNET_WEIGHTS)
    missing = [str(p) for p in (weights.inception, weights.alexnet) if not p.is_file()]
    if missing:
        raise UserInputError(
            [f"missing weights file {p}" for p in missing]
            + [
                "these metrics never download: on a machine with internet, run "
                "`python -c \"from torchmetrics.image.fid import FrechetInceptionDistance as F; "
                "from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity as L; "
                "F(feature=2048); L(net_type='alex')\"` and copy its hub checkpoints folder to "
                f"{checkpoints} (or point TORCH_HOME at a copy)"
            ],
            title="eval.feature_extractor: inception needs cached weights:",
        )
    return weights


def unit_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Scale each spatial position's channel vector to unit length (LPIPS's normalisation)."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


@torch.no_grad()
def sprite_lpips(net: SpriteNet, a: torch.Tensor, b: torch.Tensor, *, batch_size: int = 128) -> torch.Tensor:
    """Perceptual distance of each pair (a[i], b[i]) over the sprite net's feature maps, shape (N,).

    LPIPS's recipe with the sprite net as the backbone and uniform layer weights (no learned linear
    heads, which would need human judgements): for every trunk block, unit-normalise the channel vector
    at each position, take the squared difference summed over channels, average over positions, and
    sum over blocks. Identical inputs give exactly 0; any size or channel count is prepared as the net
    expects (RGBA composited, nearest resize).
    """
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"sprite_lpips needs pairs: got {a.shape[0]} and {b.shape[0]} images")
    net.eval()
    out = []
    for start in range(0, a.shape[0], batch_size):
        maps_a = net.feature_maps(net.prepare(a[start:start + batch_size]))
        maps_b = net.feature_maps(net.prepare(b[start:start + batch_size]))
        dist = sum(
            (unit_channels(fa) - unit_channels(fb)).pow(2).sum(dim=1).mean(dim=(1, 2))
            for fa, fb in zip(maps_a, maps_b, strict=True)
        )
        out.append(torch.as_tensor(dist).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def _require_net(net: SpriteNet | None) -> SpriteNet:
    if net is None:
        raise ValueError("the sprite feature extractor needs the dataset's sprite net (net=...)")
    return net


def make_fid(backend: FeatureBackend, net: SpriteNet | None) -> FrechetInceptionDistance:
    """torchmetrics FID for `backend`, fed float RGB in [0, 1] (`normalize=True`).

    sprite: the sprite net's standardised embedding as the custom feature module (it reports
    `num_features`, so torchmetrics does not probe it with a dummy image). inception: the official
    2048-feature Inception-v3, its weights read from the hub cache checked by
    `require_official_metrics`.
    """
    if backend == "sprite":
        sprite = _require_net(net)
        size = sprite.config.image_size
        return FrechetInceptionDistance(
            feature=SpriteFeatureExtractor(sprite), normalize=True, input_img_size=(3, size, size)
        )
    weights = require_official_metrics()
    return FrechetInceptionDistance(
        feature=2048, normalize=True, feature_extractor_weights_path=str(weights.inception)
    )


def make_kid(
    backend: FeatureBackend, net: SpriteNet | None, *, subset_size: int, subsets: int
) -> KernelInceptionDistance:
    """torchmetrics KID for `backend` (see `make_fid`); `subset_size` must not exceed either set.

    For inception, torchmetrics gives KID no weights path: torch-fidelity then finds the file in the
    hub cache that `require_official_metrics` checked, so it does not download.
    """
    feature: int | SpriteFeatureExtractor = 2048
    if backend == "sprite":
        feature = SpriteFeatureExtractor(_require_net(net))
    else:
        require_official_metrics()
    with warnings.catch_warnings():
        # KID warns on every construction that it buffers all features: a few hundred sprites here.
        warnings.filterwarnings("ignore", message=".*will save all extracted features", category=UserWarning)
        return KernelInceptionDistance(feature=feature, subset_size=subset_size, subsets=subsets, normalize=True)


@lru_cache(maxsize=1)
def _official_lpips() -> LearnedPerceptualImagePatchSimilarity:
    # Built once per process: AlexNet loads from disk each time it is constructed.
    return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True, reduction="none")


@torch.no_grad()
def inception_lpips(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Official AlexNet LPIPS of each pair of RGB images in [0, 1], shape (N,)."""
    require_official_metrics()
    metric = _official_lpips()
    metric.reset()
    metric.update(a.float(), b.float())
    return metric.compute().reshape(-1).float().cpu()
