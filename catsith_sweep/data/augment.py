"""Training-time augmentation: the guide's colour jitter and light noise, alpha kept exactly.

A directional sprite must never be mirrored: a flipped "facing right" ship faces left under the
"facing right" caption (catsith-formats.md §5). That is enforced BY CONSTRUCTION: directional sprites
go through `directional_pipeline`, which only accepts pixel-level (ImageOnly) transforms and builds
no flip; the optional flip lives only in `non_directional_pipeline`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import albumentations as A
import numpy as np

from catsith_sweep.errors import DatasetError

if TYPE_CHECKING:
    from catsith_sweep.config.schema import AugmentSection


def _colour_transforms(section: AugmentSection) -> list[A.BasicTransform]:
    """The guide's ColorJitter + GaussNoise, with the section's values (noise std in [0, 1] units;
    albumentations 2.x's GaussNoise takes std_range as a fraction of the maximum value)."""
    return [
        A.ColorJitter(brightness=section.brightness, contrast=section.contrast,
                      saturation=section.saturation, hue=section.hue, p=section.color_jitter_p),
        A.GaussNoise(std_range=tuple(section.noise_std), p=section.noise_p),
    ]


def directional_pipeline(section: AugmentSection, extra: Sequence[A.BasicTransform] = ()) -> A.Compose:
    """RGB-only pipeline for directional sprites: no flip, and any geometric transform is refused."""
    transforms = [*_colour_transforms(section), *extra]
    for t in transforms:
        if not isinstance(t, A.ImageOnlyTransform):
            raise DatasetError(f"{type(t).__name__}: a geometric transform cannot augment directional "
                               "sprites (it would corrupt their direction labels)")
    return A.Compose(transforms)


def non_directional_pipeline(section: AugmentSection) -> tuple[A.Compose, A.Compose]:
    """(geometric on RGBA, colour on RGB) for sprites without a direction: the flip is allowed."""
    return A.Compose([A.HorizontalFlip(p=section.hflip_p)]), A.Compose(_colour_transforms(section))


class SpriteAugment:
    """Callable on an H x W x 4 uint8 RGBA array; picks the pipeline from the sprite's `directions`.

    Colour changes apply to RGB only; the alpha channel comes back unchanged (flipped with the image
    when a non-directional sprite is mirrored), and fully transparent pixels keep their RGB, so noise
    never hides in invisible pixels.
    """

    def __init__(self, section: AugmentSection, *, seed: int | None = None) -> None:
        std = tuple(section.noise_std)
        if len(std) != 2 or not 0 <= std[0] <= std[1] <= 1:
            raise DatasetError(f"augment.noise_std {std}: expected (low, high) with 0 <= low <= high <= 1")
        self.section = section
        self.directional = directional_pipeline(section)
        self.geometric, self.colour = non_directional_pipeline(section)
        if seed is not None:
            for pipeline in (self.directional, self.geometric, self.colour):
                pipeline.set_random_seed(seed)

    def __call__(self, rgba: np.ndarray, *, directions: int) -> np.ndarray:
        if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8:
            raise DatasetError(f"augment: expected an H x W x 4 uint8 RGBA array, got {rgba.shape} {rgba.dtype}")
        if not self.section.enabled:  # the schema's default (off) is the one default
            return rgba.copy()  # a disabled section is a no-op, whoever built this object
        if directions > 1:
            image, colour = rgba, self.directional
        else:
            image, colour = self.geometric(image=rgba)["image"], self.colour
        alpha = image[..., 3]
        rgb = colour(image=np.ascontiguousarray(image[..., :3]))["image"]
        out = np.empty_like(image)
        out[..., :3] = np.where(alpha[..., None] == 0, image[..., :3], rgb)
        out[..., 3] = alpha
        return out
