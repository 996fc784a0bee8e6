"""Evaluation of a text-to-sprite model, shared by every diffusion trainer: a fixed-prompt sample grid
and sprite metrics (FID/KID/LPIPS over the chosen feature extractor, kind and direction accuracy,
palette distance), all on the held-out split (`trainers.heldout`): samples are generated from held-out
captions and compared with held-out sprites, by a sprite net that never saw one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from catsith_sweep.config.schema import Experiment
from catsith_sweep.data.split import EntitySplit
from catsith_sweep.models.builtin import DiffusionParts, default_cache_dir
from catsith_sweep.trainers import diffusion as D
from catsith_sweep.trainers.base import Evaluation

GRID_ROWS = 8


def default_prompts(dataset: Any, rows: int = GRID_ROWS) -> list[str]:
    """One caption per kind, spread over the dataset's kinds and over the 8 directions, in a fixed
    order, so every trial of every sweep on this dataset shows the same grid."""
    chosen: dict[int, int] = {}
    for index in range(len(dataset)):
        kind = int(dataset.kinds[index])
        direction = int(dataset.directions[index])
        wanted = (len(chosen) * 3) % 8
        if kind not in chosen and direction in (-1, wanted):
            chosen[kind] = index
    picks = sorted(chosen.values())
    step = max(1, len(picks) // rows)
    return [dataset.captions[i] for i in picks[::step][:rows]]


def reference_images(dataset: Any, prompts: list[str]) -> torch.Tensor | None:
    """The ground-truth sprite of each prompt, when the prompt is one of the dataset's captions."""
    index = {caption: i for i, caption in enumerate(dataset.captions)}
    if not all(p in index for p in prompts):
        return None
    return dataset.images[[index[p] for p in prompts]]


def metric_subset(indices: Sequence[int], count: int) -> list[int]:
    """`count` evenly spaced picks of `indices` (the held-out split), cycling when there are fewer:
    the dataset indices whose captions (and labels) metric samples are drawn for."""
    total = len(indices)
    return [int(indices[int(i * total / count) % total]) for i in range(count)]


def sprite_net(dataset: Any, experiment: Experiment, *, train_indices: Sequence[int]) -> Any:
    """The metrics' sprite feature network, trained (once, cached) on `train_indices` only: pass the
    split's training side, so it never sees a held-out sprite."""
    from catsith_sweep.models.sprite_net import sprite_net_for_dataset

    with torch.enable_grad():  # trained on first use; callers may be inside no_grad
        return sprite_net_for_dataset(dataset.root, experiment.model.cache_dir or default_cache_dir(),
                                      train_indices=train_indices)


def save_samples_tensors(path: Path, images: torch.Tensor, reference: torch.Tensor | None,
                         prompts: list[str], seeds: int) -> None:
    """The grid's pixels, for the sweep's side-by-side comparison of trials."""
    import json

    from safetensors.torch import save_file

    tensors = {"images": images.contiguous()}
    if reference is not None:
        tensors["reference"] = reference.contiguous()
    save_file(tensors, str(path), metadata={"prompts": json.dumps(prompts), "seeds": str(seeds)})


@torch.no_grad()
def evaluate_samples(parts: DiffusionParts, dataset: Any, experiment: Experiment, out_dir: Path,
                     prompts: list[str], step: int, device: torch.device, *, split: EntitySplit) -> Evaluation:
    """Generate the grid and the metric set; return their metrics and the grid's path.

    Metric samples are generated from `eval.num_metric_samples` captions of held-out sprites and
    scored against the held-out sprites only (the reference set of FID/KID/LPIPS/palette distance;
    the labels of the accuracies). The grid shows `prompts` (a picture for people, not a metric).
    """
    from catsith_sweep.metrics.scores import (
        compute_image_metrics,
        direction_accuracy,
        kind_accuracy,
        palette_distance,
    )

    ev = experiment.eval
    grid_images = D.generate(parts, prompts, ev.seeds, steps=ev.num_inference_steps,
                             guidance_scale=ev.guidance_scale, device=device)
    reference = reference_images(dataset, prompts)
    grid = D.save_sample_grid(grid_images, prompts, len(ev.seeds), out_dir / "samples.png", reference=reference)
    save_samples_tensors(out_dir / "samples.safetensors", grid_images, reference, prompts, len(ev.seeds))
    subset = metric_subset(split.heldout, ev.num_metric_samples)
    captions = [dataset.captions[i] for i in subset]
    fake = torch.cat([
        D.generate(parts, captions[s:s + 16], [experiment.train.seed + s], steps=ev.num_inference_steps,
                   guidance_scale=ev.guidance_scale, device=device)
        for s in range(0, len(captions), 16)
    ])
    net = sprite_net(dataset, experiment, train_indices=split.train)
    heldout = dataset.images[split.heldout]
    metrics = compute_image_metrics(heldout, fake, backend=ev.feature_extractor, net=net)
    metrics["kind_accuracy"] = kind_accuracy(net, fake, dataset.kinds[subset])
    metrics["direction_accuracy"] = direction_accuracy(net, fake, dataset.directions[subset])
    metrics["palette_distance"] = palette_distance(heldout, fake)
    return Evaluation(step, {k: float(v) for k, v in metrics.items()}, {"samples": grid})
