"""CatSith's exospace entity vocabulary (catsith-formats.md §5), the single source for labels.

Label indices are positions in these tuples; the sprite feature network and every metric that reads
labels use them, so append new kinds at the end, never reorder.
"""

from __future__ import annotations

CATEGORIES: tuple[str, ...] = ("vehicle", "projectile", "environment")

KINDS_BY_CATEGORY: dict[str, tuple[str, ...]] = {
    "vehicle": ("fighter", "bomber", "scout", "cruiser", "carrier", "station"),
    "projectile": ("bullet", "bomb", "beam", "missile", "plasma", "laser"),
    "environment": ("asteroid", "debris", "station", "portal", "nebula", "star", "planet"),
}

# One flat label per (category, kind): "station" exists as a vehicle and as an environment object.
KIND_LABELS: tuple[str, ...] = tuple(f"{c}/{k}" for c in CATEGORIES for k in KINDS_BY_CATEGORY[c])

DIRECTIONS_BY_CATEGORY: dict[str, int] = {"vehicle": 8, "projectile": 1, "environment": 1}

# Clockwise from 0 = up; the guide's caption wording.
DIRECTION_NAMES: tuple[str, ...] = (
    "facing up",
    "facing up-right",
    "facing right",
    "facing down-right",
    "facing down",
    "facing down-left",
    "facing left",
    "facing up-left",
)

BASE_COLORS: dict[str, tuple[int, int, int]] = {
    "vehicle/fighter": (64, 192, 128),
    "vehicle/bomber": (192, 128, 64),
    "vehicle/scout": (64, 128, 192),
    "vehicle/cruiser": (128, 64, 192),
    "vehicle/carrier": (192, 192, 64),
    "vehicle/station": (128, 128, 128),
    "projectile/bullet": (255, 255, 0),
    "projectile/bomb": (255, 128, 0),
    "projectile/beam": (0, 255, 255),
    "projectile/missile": (255, 0, 0),
    "projectile/plasma": (128, 0, 255),
    "projectile/laser": (0, 255, 0),
}


def kind_label(category: str, kind: str) -> int:
    """Index of (category, kind) in KIND_LABELS; ValueError names the pair when unknown."""
    key = f"{category}/{kind}"
    try:
        return KIND_LABELS.index(key)
    except ValueError:
        raise ValueError(f"unknown entity kind {key!r}; known: {', '.join(KIND_LABELS)}") from None
