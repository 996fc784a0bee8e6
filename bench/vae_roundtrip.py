"""Encode -> decode error of a base's VAE on sprites it was built on, sprites it never saw, and alpha.

The round trip (posterior mean, no diffusion) is the ceiling of every LoRA trained on the base: what
its VAE cannot reproduce, no UNet adapter can draw. Four sets, each 64 px RGBA:

- `own-train`: the synth set the builtin base is built on (seed 0, 3 designs per kind, `16bit`).
- `own-heldout`: the same style, other designs (synth seed 1): the base never saw these sprites.
- `handheld`: synth seed 1 in the `handheld` style (four greens): a palette it never saw.
- `rendered-sheet`: sprite sheets drawn here with smooth shading, soft anti-aliased edges and random
  hues, frames of 40-72 px, imported with `import_sheet` (so nearest-resized to 64 px, partial alpha):
  a look that is not pixel art at all.

Error: mean absolute error per colour channel on opaque pixels (alpha >= 0.5 in the original), and the
mean absolute alpha error on all pixels, both in 1/255 units. Goal (issue 11): own-heldout <= 12,
unseen styles <= 20, alpha <= 4.

    .venv/bin/python bench/vae_roundtrip.py ~/.cache/catsith_sweep/bases/catsith-tiny-v2
    .venv/bin/python bench/vae_roundtrip.py /tmp/h8-base/diffusers --png /tmp/roundtrip.png
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SET_NAMES = ("own-train", "own-heldout", "handheld", "rendered-sheet")
SHEET_FRAME_SIZES = (40, 48, 56, 72)
SHEET_FRAMES = 8  # per sheet: 4 sheets x 8 frames = 32 rendered sprites


# ---- a rendered (non pixel-art) sprite sheet ---------------------------------------------------------
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _shape(kind: int, xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(coverage 0/1, shading 0..1) of one shape on a supersampled grid of centred coordinates in [-1, 1]."""
    if kind == 0:  # a lit sphere (planet)
        r = rng.uniform(0.55, 0.85)
        inside = xx ** 2 + yy ** 2 < r ** 2
        z = np.sqrt(np.clip(r ** 2 - xx ** 2 - yy ** 2, 0, None)) / r
        light = np.clip((-0.5 * xx - 0.6 * yy) / r + 0.7 * z, 0, 1)
        return inside, light
    if kind == 1:  # a ship: a tapered hull plus swept wings, shaded top to bottom
        width = rng.uniform(0.25, 0.4)
        hull = (np.abs(xx) < width * (yy + 0.9) / 1.8) & (yy > -0.85) & (yy < 0.75)
        wings = (np.abs(xx) < rng.uniform(0.6, 0.85)) & (yy > 0.1 + 0.6 * np.abs(xx)) & (yy < 0.55 + 0.3 * np.abs(xx))
        light = np.clip(0.9 - 0.45 * (yy + 1) + 0.25 * np.cos(6 * xx), 0, 1)
        return hull | wings, light
    # an asteroid: a lumpy blob with mottled shading
    angle = np.arctan2(yy, xx)
    lumps = sum(rng.uniform(0.03, 0.09) * np.cos(k * angle + rng.uniform(0, 6.3)) for k in (2, 3, 5))
    inside = np.sqrt(xx ** 2 + yy ** 2) < 0.65 + lumps
    mottle = 0.15 * np.sin(9 * xx + 4 * yy) * np.cos(7 * yy - 3 * xx)
    light = np.clip(0.65 - 0.35 * (xx + yy) + mottle, 0, 1)
    return inside, light


def rendered_frame(size: int, rng: np.random.Generator, supersample: int = 4) -> np.ndarray:
    """One size x size RGBA sprite, drawn at `supersample` x and box-filtered down (soft edges)."""
    n = size * supersample
    centre = (np.arange(n) + 0.5) / n * 2 - 1
    xx, yy = np.meshgrid(centre, centre)
    inside, light = _shape(int(rng.integers(3)), xx / 0.92, yy / 0.92, rng)
    hue = rng.uniform()
    dark = _hsv(hue, rng.uniform(0.5, 0.9), 0.25)
    bright = _hsv(hue + rng.uniform(-0.08, 0.08), rng.uniform(0.2, 0.6), 1.0)
    rgb = dark + (bright - dark) * light[..., None]
    rgba = np.concatenate([rgb * inside[..., None], inside[..., None].astype(float)], axis=-1)
    small = rgba.reshape(size, supersample, size, supersample, 4).mean(axis=(1, 3))
    # un-premultiply: colour of the covered part, as a rendered PNG with alpha stores it
    alpha = small[..., 3:]
    small[..., :3] = np.where(alpha > 0, small[..., :3] / np.maximum(alpha, 1e-6), 0)
    return np.clip(np.rint(small * 255), 0, 255).astype(np.uint8)


def write_rendered_sheets(folder: Path, *, seed: int = 7) -> list[tuple[Path, int]]:
    """One PNG strip per frame size in SHEET_FRAME_SIZES; returns (path, frame size) pairs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sheets = []
    for size in SHEET_FRAME_SIZES:
        strip = np.concatenate([rendered_frame(size, rng) for _ in range(SHEET_FRAMES)], axis=1)
        path = folder / f"rendered_{size}px.png"
        Image.fromarray(strip, "RGBA").save(path)
        sheets.append((path, size))
    return sheets


def rendered_sheet_images(work: Path, *, size: int = 64) -> Any:
    """The rendered sheets imported with `import_sheet` (one entity per sheet), as N x 4 x H x W in [0, 1]."""
    from catsith_sweep.data.dataset import SpriteDataset
    from catsith_sweep.data.sheets import import_sheet

    dataset = work / "rendered-dataset"
    if not (dataset / "metadata.json").exists():
        work.mkdir(parents=True, exist_ok=True)
        for path, frame in write_rendered_sheets(work):
            import_sheet(path, dataset, frame_size=(frame, frame), category="environment", kind="asteroid",
                         entity_id=f"environment_rendered_{frame}px", size=size)
    return SpriteDataset(dataset, size=size).images


# ---- the sets and the measure ------------------------------------------------------------------------
def eval_sets(cache_dir: Path, *, size: int = 64) -> dict[str, Any]:
    """Name -> images (N x 4 x H x W float in [0, 1]) for SET_NAMES, synthesised under `cache_dir`."""
    from catsith_sweep.config.schema import DataSection
    from catsith_sweep.data.dataset import SpriteDataset
    from catsith_sweep.data.source import dataset_root

    def synth(seed: int, style: str) -> Any:
        section = DataSection(synth_seed=seed, synth_style=style, resolution=size)
        return SpriteDataset(dataset_root(section, cache_dir), size=size).images

    return {"own-train": synth(0, "16bit"), "own-heldout": synth(1, "16bit"), "handheld": synth(1, "handheld"),
            "rendered-sheet": rendered_sheet_images(cache_dir / "rendered-sheet", size=size)}


def roundtrip(vae: Any, images: Any, *, batch_size: int = 32) -> Any:
    """Decode(encode(images).mean) for an RGBA VAE, in [0, 1]."""
    import torch

    outputs = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            pixels = images[start:start + batch_size] * 2 - 1
            outputs.append(((vae.decode(vae.encode(pixels).latent_dist.mean).sample + 1) / 2).clamp(0, 1))
    return torch.cat(outputs)


def roundtrip_errors(original: Any, recon: Any) -> dict[str, float]:
    """{'rgb': mean |error| per colour channel on opaque pixels, 'alpha': mean |alpha error|}, in 1/255."""
    opaque = (original[:, 3:4] >= 0.5).float()
    rgb = ((recon[:, :3] - original[:, :3]).abs() * opaque).sum() / (opaque.sum() * 3).clamp(min=1)
    alpha = (recon[:, 3] - original[:, 3]).abs().mean()
    return {"rgb": float(rgb) * 255, "alpha": float(alpha) * 255}


def measure(vae: Any, sets: dict[str, Any]) -> dict[str, dict[str, float]]:
    vae.eval()
    return {name: roundtrip_errors(images, roundtrip(vae, images)) for name, images in sets.items()}


def format_table(results: dict[str, dict[str, float]]) -> str:
    goals = {"own-train": "", "own-heldout": "<= 12", "handheld": "<= 20", "rendered-sheet": "<= 20"}
    lines = [f"{'set':<16}{'images':>7}{'rgb /255':>10}{'alpha /255':>12}  goal (rgb; alpha <= 4)"]
    for name, row in results.items():
        count = int(row.get("n", 0))
        lines.append(f"{name:<16}{count:>7}{row['rgb']:>10.1f}{row['alpha']:>12.1f}  {goals.get(name, '')}")
    return "\n".join(lines)


def side_by_side(sets: dict[str, Any], vae: Any, out_png: Path, *, per_set: int = 8) -> None:
    """Originals above their round trips, `per_set` sprites of each set, on a grey background."""
    import torch
    from PIL import Image

    rows = []
    for images in sets.values():
        picks = images[torch.linspace(0, len(images) - 1, per_set).long()]
        for tile in (picks, roundtrip(vae, picks)):
            rgb = tile[:, :3] * tile[:, 3:] + 0.5 * (1 - tile[:, 3:])
            rows.append(torch.cat(list(rgb), dim=2))
    grid = (torch.cat(rows, dim=1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(grid, "RGB").resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST).save(out_png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base", type=Path, help="a base folder (diffusers layout, or one holding diffusers/)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "catsith_vae_roundtrip",
                        help="where the evaluation sets are synthesised (reused between runs)")
    parser.add_argument("--png", type=Path, help="also write originals above round trips here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch
    from diffusers import AutoencoderKL

    torch.set_num_threads(args.threads)
    folder = args.base / "diffusers" if (args.base / "diffusers" / "vae").is_dir() else args.base
    if not (folder / "vae").is_dir():
        print(f"{args.base}: no vae/ folder (expected a diffusers base folder)", file=sys.stderr)
        return 2
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    sets = eval_sets(args.cache_dir)
    results = measure(vae, sets)
    for name, images in sets.items():
        results[name]["n"] = len(images)
    latent = vae.encode(sets["own-train"][:1] * 2 - 1).latent_dist.mean.shape[1:]
    print(f"{folder}: latent {'x'.join(str(d) for d in latent)} (C x H x W)")
    print(format_table(results))
    if args.png:
        side_by_side(sets, vae, args.png)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
