"""The sprite feature network: a small CNN trained on a sprite dataset's own labels.

Inception (FID/KID) and AlexNet/VGG (LPIPS) are neither installable nor downloadable here, and an
ImageNet network judges 64 px pixel art poorly anyway. This network learns the sprite domain from the
labels every dataset carries (category, kind, direction: catsith-formats.md §5) and its penultimate
features replace Inception's in FID/KID, its intermediate maps replace AlexNet's in LPIPS, and its
heads give the sprite-domain scores (does a generated fighter look like a fighter, facing the right way?).

Input decision: three channels, RGBA composited over the game's black background
(`data.pixels.DEFAULT_BACKGROUND`). Metrics then see what a player sees, FID real/fake inputs have
the same (N, 3, H, W) form as the official Inception backend, and RGBA callers are composited here.
The net is saved as safetensors + JSON config (never pickle) and cached per dataset fingerprint.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from catsith_sweep.data import vocab
from catsith_sweep.data.pixels import DEFAULT_BACKGROUND, composite_rgba, to_float_images, upscale_nearest
from catsith_sweep.io import atomic_path, atomic_write_json, file_lock, staged_dir
from catsith_sweep.layout import SPRITE_NETS_DIR

FORMAT_NAME = "catsith-sprite-net"
# Bump when the architecture or training recipe changes: cached nets of another recipe are retrained.
RECIPE_VERSION = 2
# Optimizer steps of the default recipe: enough for high held-out accuracy on synth sprites on a CPU.
DEFAULT_STEPS = 300
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class SpriteNetConfig:
    """Everything needed to rebuild a SpriteNet; stored as JSON beside the weights."""

    widths: tuple[int, ...] = (16, 32, 64, 64)
    feature_dim: int = 64
    image_size: int = 64
    background: tuple[int, int, int] = DEFAULT_BACKGROUND
    num_categories: int = len(vocab.CATEGORIES)
    # The label names, not just their count, so a net trained on another vocabulary is detected.
    kind_labels: tuple[str, ...] = vocab.KIND_LABELS
    num_directions: int = len(vocab.DIRECTION_NAMES)
    recipe_version: int = RECIPE_VERSION
    training: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpriteNetConfig:
        """Inverse of `asdict`: JSON lists back to tuples."""
        return cls(
            widths=tuple(data["widths"]),
            feature_dim=int(data["feature_dim"]),
            image_size=int(data["image_size"]),
            background=(int(data["background"][0]), int(data["background"][1]), int(data["background"][2])),
            num_categories=int(data["num_categories"]),
            kind_labels=tuple(data["kind_labels"]),
            num_directions=int(data["num_directions"]),
            recipe_version=int(data["recipe_version"]),
            training=dict(data.get("training", {})),
        )


class SpriteNet(nn.Module):
    """Conv trunk (stride-2 3x3 blocks) -> D-dim embedding -> category / kind / direction heads."""

    feature_mean: torch.Tensor
    feature_scale: torch.Tensor

    def __init__(self, config: SpriteNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or SpriteNetConfig()
        cfg = self.config
        side = cfg.image_size // 2 ** len(cfg.widths)
        if side < 1 or cfg.image_size % 2 ** len(cfg.widths):
            raise ValueError(f"image_size {cfg.image_size} does not fit {len(cfg.widths)} stride-2 blocks")
        blocks: list[nn.Module] = []
        in_ch = 3
        for width in cfg.widths:
            blocks.append(
                nn.Sequential(nn.Conv2d(in_ch, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU())
            )
            in_ch = width
        self.blocks = nn.ModuleList(blocks)
        # Flatten, not global pooling: direction is a spatial property the embedding must keep.
        self.embed = nn.Linear(in_ch * side * side, cfg.feature_dim)
        self.category_head = nn.Linear(cfg.feature_dim, cfg.num_categories)
        self.kind_head = nn.Linear(cfg.feature_dim, len(cfg.kind_labels))
        self.direction_head = nn.Linear(cfg.feature_dim, cfg.num_directions)
        # Set by train_sprite_net from the training sprites; saved with the weights.
        self.register_buffer("feature_mean", torch.zeros(cfg.feature_dim))
        self.register_buffer("feature_scale", torch.ones(cfg.feature_dim))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Any sprite batch (uint8 or float, RGB or RGBA, any size) -> float RGB at the net's size."""
        images = composite_rgba(to_float_images(images), self.config.background)
        if images.shape[-1] != self.config.image_size or images.shape[-2] != self.config.image_size:
            images = upscale_nearest(images, self.config.image_size)
        return images.to(next(self.parameters()).device)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Post-activation output of every trunk block for prepared input (the LPIPS layers)."""
        maps = []
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return maps

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """(N, feature_dim) penultimate layer of prepared input, as the heads see it (before ReLU)."""
        return self.embed(self.feature_maps(x)[-1].flatten(start_dim=1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, feature_dim) metric features of prepared input: the embedding, standardised.

        Taken before the activation: ReLU'd features have dead, constant-zero dimensions that make the
        feature covariance singular, which FID's matrix square root handles badly. Standardised with
        the training set's per-dimension mean and std (stored buffers), so every dimension weighs the
        same in FID and KID's polynomial kernel sees unit-scale inputs, as it assumes.
        """
        return (self.embedding(x) - self.feature_mean) / self.feature_scale

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of the three heads for prepared input."""
        h = F.relu(self.embedding(x))
        return {
            "category": self.category_head(h),
            "kind": self.kind_head(h),
            "direction": self.direction_head(h),
        }


class SpriteFeatureExtractor(nn.Module):
    """The feature module torchmetrics' FID/KID take as `feature=`: (N, 3|4, H, W) -> (N, D) float.

    torchmetrics 1.9 hands a custom module the images exactly as passed to `update` (its `normalize`
    flag only rescales for the built-in Inception), so this accepts float in [0, 1] and also uint8 in
    [0, 255]; RGBA is composited, other sizes resized by nearest neighbour. It stays in eval mode even if
    the metric calls `.train()`, so BatchNorm never switches to batch statistics.
    """

    def __init__(self, net: SpriteNet) -> None:
        super().__init__()
        self.net = net
        self.num_features = net.config.feature_dim
        self.net.eval()

    def train(self, mode: bool = True) -> SpriteFeatureExtractor:
        """Ignore `mode`: a metric's feature extractor is frozen."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, num_features) float32 features, on the device of `images`.

        Returned where the images came from (not where the net runs), because the metric keeps its
        running sums on the device it was given the images on.
        """
        with torch.no_grad():
            return self.net.features(self.net.prepare(images)).float().to(images.device)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Light, label-preserving augmentation of prepared (N, 3, S, S) input.

    Small shifts (sprites are not always centred), per-channel gain (generated colours drift), a blur
    on some samples (decoders and VAEs give soft edges) and faint Gaussian noise, so generated sprites
    of the right kind are still recognised. Never a flip or rotation: that changes a directional
    sprite's label. Blur and noise stay light so the features still respond to the heavier
    degradations FID must penalise.
    """
    n = x.shape[0]
    dy, dx = (int(v) for v in torch.randint(-3, 4, (2,), generator=gen))
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    x = x * (0.85 + 0.3 * torch.rand(n, 3, 1, 1, generator=gen))
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    blur = (torch.rand(n, 1, 1, 1, generator=gen) < 0.25).to(x.dtype)
    x = blur * blurred + (1 - blur) * x
    sigma = 0.02 * torch.rand(n, 1, 1, 1, generator=gen)
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0.0, 1.0)


def _head_losses(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    loss = F.cross_entropy(logits["category"], labels["category"]) + F.cross_entropy(
        logits["kind"], labels["kind"]
    )
    # Non-directional sprites carry -1; a batch with none directional would make the mean NaN.
    if bool((labels["direction"] >= 0).any()):
        loss = loss + F.cross_entropy(logits["direction"], labels["direction"], ignore_index=-1)
    return loss


def train_sprite_net(
    images: torch.Tensor,
    categories: torch.Tensor,
    kinds: torch.Tensor,
    directions: torch.Tensor,
    *,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    lr: float = 3e-3,
    config: SpriteNetConfig | None = None,
) -> SpriteNet:
    """Train a SpriteNet on labelled sprites (N, 3|4, H, W); returns it in eval mode on `device`.

    Labels are indices: category in vocab.CATEGORIES, kind in vocab.KIND_LABELS, direction 0..7 or -1
    for non-directional sprites (ignored). Deterministic for a given seed on CPU. Adam with a cosine
    learning-rate decay; `config.training` records steps, seed, time and final training accuracy.
    """
    if images.shape[0] < 2:
        raise ValueError("need at least two sprites to train the sprite feature network")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SpriteNet(config or SpriteNetConfig()).to(device)
    # Prepared once (composited, resized) and kept on the CPU in chunks, so big datasets fit.
    x_all = torch.cat([net.prepare(images[i:i + 256]).cpu() for i in range(0, images.shape[0], 256)])
    labels_all = {
        "category": categories.long(),
        "kind": kinds.long(),
        "direction": directions.long(),
    }
    started = time.perf_counter()
    _fit(net, x_all, labels_all, steps=steps, batch_size=batch_size, lr=lr, gen=gen)
    net.eval()
    _fit_feature_standardisation(net, x_all)
    acc = _accuracies(classify(net, images), labels_all)
    training = {"steps": steps, "seed": seed, "seconds": round(time.perf_counter() - started, 2), **acc}
    net.config = SpriteNetConfig(**{**asdict(net.config), "training": training})
    return net


# Gradients on even when the caller is inside torch.no_grad() (an evaluation that trains on first use).
@torch.enable_grad()
def _fit(net: SpriteNet, x_all: torch.Tensor, labels_all: dict[str, torch.Tensor], *, steps: int,
         batch_size: int, lr: float, gen: torch.Generator) -> None:
    """Adam with cosine decay on augmented random batches of the prepared sprites (kept on the CPU)."""
    device = next(net.parameters()).device
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    net.train()
    from catsith_sweep.progress import track  # ~20-80 s on a 2-core CPU: say how long is left

    for _ in track(range(steps), title="training the sprite feature net (first use of this dataset)",
                   total=steps, unit="steps"):
        idx = torch.randint(0, x_all.shape[0], (min(batch_size, x_all.shape[0]),), generator=gen)
        x = _augment(x_all[idx], gen).to(device)
        loss = _head_losses(net(x), {k: v[idx].to(device) for k, v in labels_all.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


@torch.no_grad()
def _fit_feature_standardisation(net: SpriteNet, prepared: torch.Tensor, batch_size: int = 256) -> None:
    device = net.feature_mean.device
    emb = torch.cat([net.embedding(b.to(device)) for b in prepared.split(batch_size)])
    net.feature_mean.copy_(emb.mean(dim=0))
    # The floor keeps a dimension that never varies on the training set from blowing up to infinity.
    net.feature_scale.copy_(emb.std(dim=0).clamp(min=1e-3))


def _accuracies(pred: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {}
    for key in ("category", "kind", "direction"):
        mask = labels[key] >= 0
        if bool(mask.any()):
            out[f"train_{key}_accuracy"] = float((pred[key][mask] == labels[key][mask]).float().mean())
    return out


@torch.no_grad()
def classify(net: SpriteNet, images: torch.Tensor, *, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Predicted label indices {"category", "kind", "direction"} (each (N,) long, on CPU)."""
    net.eval()
    preds: dict[str, list[torch.Tensor]] = {"category": [], "kind": [], "direction": []}
    for start in range(0, images.shape[0], batch_size):
        logits = net(net.prepare(images[start : start + batch_size]))
        for key in preds:
            preds[key].append(logits[key].argmax(dim=1).cpu())
    return {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.long) for k, v in preds.items()}


def save_sprite_net(net: SpriteNet, directory: str | Path) -> Path:
    """Write `model.safetensors` and `config.json` into `directory` (each file atomically)."""
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    atomic_write_json(directory / CONFIG_FILE, {"format": FORMAT_NAME, "config": asdict(net.config)}, sort_keys=True)
    return directory


def load_sprite_net(directory: str | Path, *, device: str | torch.device = "cpu") -> SpriteNet:
    """Load a net saved by `save_sprite_net`, in eval mode. ValueError when the files are not one."""
    directory = Path(directory)
    try:
        payload = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        if payload.get("format") != FORMAT_NAME:
            raise ValueError(f"format is {payload.get('format')!r}, expected {FORMAT_NAME!r}")
        net = SpriteNet(SpriteNetConfig.from_json(payload["config"]))
        net.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    except (OSError, KeyError, TypeError, json.JSONDecodeError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{directory} does not hold a sprite feature network: {exc}") from exc
    return net.to(device).eval()


def _chosen(dataset: Any, train_indices: Sequence[int] | None) -> list[int]:
    chosen = list(range(len(dataset))) if train_indices is None else [int(i) for i in train_indices]
    if any(not 0 <= i < len(dataset) for i in chosen):
        raise ValueError(f"train_indices must lie in 0..{len(dataset) - 1} (the dataset's sprites)")
    if len(chosen) < 2:
        raise ValueError(f"dataset {dataset.root}: {len(chosen)} training sprites; the sprite net needs two")
    return chosen


def _labelled(dataset: Any, train_indices: Sequence[int] | None = None) -> tuple[torch.Tensor, ...]:
    """(images, categories, kinds, directions) of the training sprites of a dataset, unaugmented:
    those at `train_indices` (dataset order), or every sprite when None."""
    chosen = _chosen(dataset, train_indices)
    labels = []
    for key, attribute in (("category", "categories"), ("kind", "kinds"), ("direction", "directions")):
        values = getattr(dataset, attribute, None)
        if values is None:  # a reader without label arrays: read them item by item
            values = [int(dataset[i][key]) for i in range(len(dataset))]
        labels.append(torch.as_tensor(values).long()[chosen])
    return (torch.as_tensor(dataset.images)[chosen], *labels)


def training_set_key(names: Sequence[str] | None) -> str:
    """The cache-key part naming which images a net trained on: "" for every image of the dataset
    (the key of nets cached before splits existed), else "-train-" + a digest of the sorted names."""
    if names is None:
        return ""
    import blake3

    digest = blake3.blake3("\n".join(sorted(names)).encode("utf-8")).hexdigest()[:16]
    return f"-train-{digest}"


def _usable_cache(directory: Path) -> SpriteNet | None:
    """The cached net if it loads and matches the current recipe and vocabulary, else None."""
    if not directory.is_dir():
        return None
    try:
        net = load_sprite_net(directory)
    except ValueError:
        return None
    cfg = net.config
    if cfg.recipe_version != RECIPE_VERSION or cfg.kind_labels != vocab.KIND_LABELS:
        return None
    return net


def sprite_net_for_dataset(
    dataset_root: str | Path,
    cache_dir: str | Path,
    *,
    train_indices: Sequence[int] | None = None,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> SpriteNet:
    """The sprite net of a dataset, trained once per (dataset fingerprint, training images) and cached.

    `train_indices` (the training side of `data.split.split_by_entity`) are the only sprites it trains
    on and standardises its features with, so metrics on the held-out side score designs it never saw;
    None trains on every sprite. The entry is `cache_dir/sprite_nets/<fingerprint><training_set_key>/`
    (`data.dataset.fingerprint`: any change to the dataset trains a new net; another split another
    one). Concurrent trials on one machine serialise on a lock file, so one trains and the others load
    its net; the net is written to a temporary directory and renamed into place, so a crash never
    leaves half a net behind. A stale entry (older recipe, other vocabulary, unreadable) is replaced.
    """
    # Imported here so models/ loads without the dataset reader and its image dependencies.
    from catsith_sweep.data.dataset import SpriteDataset, fingerprint

    dataset_root = Path(dataset_root)
    dataset, names = None, None
    if train_indices is not None:  # the key needs the names: read the dataset once, now
        dataset = SpriteDataset(dataset_root)
        names = [dataset.names[i] for i in _chosen(dataset, train_indices)]
    nets = Path(cache_dir) / SPRITE_NETS_DIR
    final = nets / f"{fingerprint(dataset_root)}{training_set_key(names)}"
    cached = _usable_cache(final)
    if cached is not None:
        return cached.to(device)
    with file_lock(nets / f".{final.name}.lock"):
        cached = _usable_cache(final)  # another trial may have trained it while we waited
        if cached is not None:
            return cached.to(device)
        images, cats, kinds, dirs = _labelled(dataset or SpriteDataset(dataset_root), train_indices)
        net = train_sprite_net(images, cats, kinds, dirs, steps=steps, seed=seed, device=device)
        training = {**net.config.training, "images": len(images), "training_set": training_set_key(names) or "all"}
        net.config = SpriteNetConfig(**{**asdict(net.config), "training": training})
        with staged_dir(final) as staging:  # replaces a stale entry in one rename
            save_sprite_net(net, staging)
    return net
