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


# Colour words of measured captions (data/captions.py, colors="measured"), named by `color_name`.
COLOR_NAMES: tuple[str, ...] = (
    "black", "white", "grey", "brown", "red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink",
)

# Hue bands (HSV hue in degrees, 0 = red): each name covers hues below its end and from the previous end.
HUE_BANDS: tuple[tuple[float, str], ...] = (
    (15, "red"), (45, "orange"), (70, "yellow"), (165, "green"), (195, "cyan"), (255, "blue"),
    (290, "purple"), (345, "pink"), (360, "red"),
)
DARK_VALUE = 0.2
"""HSV value below which a colour reads as black, whatever its hue."""
GREY_SATURATION = 0.2
"""HSV saturation below which a colour reads as grey (or white, at value >= WHITE_VALUE)."""
WHITE_VALUE = 0.85


def _hue(r: float, g: float, b: float, high: float, chroma: float) -> float:
    if high == r:
        return (60 * (g - b) / chroma) % 360
    if high == g:
        return 60 * (b - r) / chroma + 120
    return 60 * (r - g) / chroma + 240


def color_name(rgb: tuple[int, int, int] | list[int]) -> str:
    """The colour word a player would use for an 8-bit RGB colour (one of COLOR_NAMES), from HSV.

    Value < 0.2: black. Saturation < 0.2: white (value >= 0.85) or grey. Otherwise the hue band
    (HUE_BANDS), with two shade rules: a red of saturation < 0.5 and value > 0.75 is pink, and an
    orange darker than value 0.65 or paler than saturation 0.45 is brown (the grey-browns of rock and
    wood: (150, 124, 96) is brown where the guide's rule says "red").
    """
    r, g, b = (float(c) / 255 for c in rgb)
    high, low = max(r, g, b), min(r, g, b)
    chroma = high - low
    saturation = chroma / high if high > 0 else 0.0
    if high < DARK_VALUE:
        return "black"
    if saturation < GREY_SATURATION:
        return "white" if high >= WHITE_VALUE else "grey"
    hue = _hue(r, g, b, high, chroma)
    name = next(band for end, band in HUE_BANDS if hue < end)
    if name == "red" and saturation < 0.5 and high > 0.75:
        return "pink"
    if name == "orange" and (high < 0.65 or (saturation < 0.45 and high < 0.8)):
        return "brown"
    return name
