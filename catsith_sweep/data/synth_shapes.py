"""The shapes of the builtin sprite set: a label-map canvas in design units and one painter per kind.

Painters draw LABELS (hull, glass, glow, ...), never colours: synth.py colours, rotates and outlines
them. Ships are drawn facing up; everything stays within about 14 units of the centre (16, 16) so no
rotation clips it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

# Labels of the paint map; synth.palette gives their colours.
EMPTY, OUTLINE, HULL, SHADE, LIGHT, GLASS, GLOW, ACCENT, WHITE, DARK = range(10)
UNITS = 32.0


class Canvas:
    """A label map drawn in design units on a G x G grid (PIL draws without anti-aliasing)."""

    def __init__(self, grid: int) -> None:
        self.grid = grid
        self.k = grid / UNITS
        self.image = Image.new("L", (grid, grid), EMPTY)
        self.draw = ImageDraw.Draw(self.image)

    def poly(self, points: list[tuple[float, float]], label: int) -> None:
        self.draw.polygon([(x * self.k, y * self.k) for x, y in points], fill=label)

    def ellipse(self, x0: float, y0: float, x1: float, y1: float, label: int) -> None:
        k = self.k
        self.draw.ellipse((x0 * k, y0 * k, x1 * k - 1, y1 * k - 1), fill=label)

    def rect(self, x0: float, y0: float, x1: float, y1: float, label: int) -> None:
        # Cells whose centre lies inside the box, at least one cell wide.
        ax, ay = math.floor(x0 * self.k + 0.5), math.floor(y0 * self.k + 0.5)
        bx, by = math.floor(x1 * self.k + 0.5) - 1, math.floor(y1 * self.k + 0.5) - 1
        self.draw.rectangle((ax, ay, max(ax, bx), max(ay, by)), fill=label)

    def mirror(self) -> None:
        """Make the design left-right symmetric by copying its left half onto the right."""
        a = np.asarray(self.image).copy()
        half = self.grid // 2
        a[:, half:] = a[:, :half][:, ::-1]
        self.set(a)

    def labels(self) -> np.ndarray:
        return np.asarray(self.image).copy()

    def set(self, labels: np.ndarray) -> None:
        self.image = Image.fromarray(labels.astype(np.uint8), "L")
        self.draw = ImageDraw.Draw(self.image)

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates (x, y) in design units, for mask-based painting."""
        c = (np.arange(self.grid) + 0.5) / self.k
        return np.meshgrid(c, c)


Painter = Callable[[Canvas, np.random.Generator], None]


# ---- ships (facing up) ------------------------------------------------------------------------------
def _fighter(c: Canvas, r: np.random.Generator) -> None:
    span, sweep = r.uniform(4.5, 7.0), r.uniform(0.0, 3.0)
    c.poly([(15, 11 + sweep), (span, 23), (span, 26), (15, 25)], HULL)
    c.poly([(16, 2), (18.5, 9), (19, 27), (13, 27), (13.5, 9)], HULL)
    c.poly([(14, 22), (10.5, 29), (14, 28)], ACCENT)
    if r.random() < 0.5:  # canards
        c.poly([(14, 11), (10, 15), (14, 15)], HULL)
    c.rect(span + 1, 23, 12, 24.5, ACCENT)
    c.ellipse(14.5, 8, 17.5, 15, GLASS)
    c.rect(14, 27, 18, 29.5, GLOW)
    c.mirror()


def _bomber(c: Canvas, r: np.random.Generator) -> None:
    tip, chord = r.uniform(2.5, 4.5), r.uniform(6.0, 9.0)
    c.poly([(11, 12), (tip, 16), (tip, 16 + chord * 0.7), (11, 12 + chord)], HULL)
    c.poly([(12.5, 4), (19.5, 4), (22, 8), (22, 27), (10, 27), (10, 8)], HULL)
    c.rect(tip + 1, 14.5, tip + 4, 25, DARK)
    c.rect(tip + 1, 25, tip + 4, 27, GLOW)
    c.rect(13, 6, 19, 9, GLASS)
    c.rect(13, 13, 19, 22, DARK)
    c.rect(12, 27, 15, 29, GLOW)
    c.rect(9, 10, 10.5, 24, ACCENT)
    c.mirror()


def _scout(c: Canvas, r: np.random.Generator) -> None:
    reach = r.uniform(6.0, 8.5)
    c.poly([(14, 18), (reach, 13), (reach - 1, 16), (14, 24)], HULL)
    c.poly([(16, 3), (18, 11), (18, 27), (14, 27), (14, 11)], HULL)
    c.poly([(14, 23), (10, 29), (14, 27)], ACCENT)
    c.ellipse(12.5, 8, 19.5, 18, GLASS)
    c.rect(reach - 1, 13, reach + 1, 16, ACCENT)
    c.rect(14.5, 27, 17.5, 29.5, GLOW)
    c.mirror()


def _cruiser(c: Canvas, r: np.random.Generator) -> None:
    side = r.uniform(8.0, 10.0)
    c.poly([(16, 1.5), (20.5, 8), (21, 28), (11, 28), (11.5, 8)], HULL)
    c.rect(side, 12, 12, 25, HULL)
    c.rect(side, 18, 12, 19.5, DARK)
    for y in (9, 15):
        c.ellipse(14, y, 18, y + 4, DARK)
        c.rect(15.5, y - 2, 16.5, y + 1, DARK)
    c.rect(14, 21, 18, 24, GLASS)
    c.rect(11, 28, 15, 30, GLOW)
    c.rect(side, 25, 12, 27, GLOW)
    c.mirror()


def _carrier(c: Canvas, r: np.random.Generator) -> None:
    width = r.uniform(6.0, 7.5)
    c.poly([(13, 2.5), (19, 2.5), (32 - width, 11), (32 - width, 27), (width, 27), (width, 11)], HULL)
    c.rect(13, 6, 19, 25, DARK)
    for y in range(8, 24, 4):
        c.rect(15, y, 17, y + 2, WHITE)
    c.rect(width + 1.5, 27, width + 4.5, 29.5, GLOW)
    c.mirror()
    # The island (bridge tower) sits on the right: carriers are the one asymmetric ship.
    c.rect(20, 12, 26.5, 22, DARK)
    c.rect(20.5, 12.5, 26, 21.5, ACCENT)
    c.rect(21, 13, 25.5, 15.5, GLASS)


def _station_ship(c: Canvas, r: np.random.Generator) -> None:
    hub = r.uniform(3.5, 5.0)
    c.ellipse(4, 6, 28, 30, HULL)
    c.ellipse(8, 10, 24, 26, EMPTY)
    c.rect(14.5, 8, 17.5, 28, DARK)
    c.rect(6, 16.5, 26, 19.5, DARK)
    c.ellipse(16 - hub, 18 - hub, 16 + hub, 18 + hub, HULL)
    c.ellipse(14, 16, 18, 20, GLASS)
    c.poly([(14.5, 8), (15, 3), (17, 3), (17.5, 8)], ACCENT)  # docking spire: the station's front
    c.rect(15, 2, 17, 4, GLOW)
    c.mirror()


# ---- projectiles (one direction) ------------------------------------------------------------------
def _bullet(c: Canvas, r: np.random.Generator) -> None:
    w = r.uniform(4.0, 6.0)
    c.ellipse(16 - w, 4, 16 + w, 28, HULL)
    c.ellipse(16 - w * 0.45, 6, 16 + w * 0.45, 18, WHITE)
    c.mirror()


def _bomb(c: Canvas, r: np.random.Generator) -> None:
    rad = r.uniform(8.0, 10.0)
    c.poly([(16, 10), (11, 3), (21, 3)], DARK)
    c.ellipse(16 - rad, 26 - 2 * rad + 2, 16 + rad, 28, HULL)
    c.rect(11, 4, 21, 6, ACCENT)
    c.mirror()
    c.ellipse(11, 13, 15, 17, WHITE)  # glint (not mirrored)


def _beam(c: Canvas, r: np.random.Generator) -> None:
    w = r.uniform(5.0, 7.0)
    c.rect(16 - w, 2, 16 + w, 30, HULL)
    c.rect(16 - w * 0.45, 2, 16 + w * 0.45, 30, WHITE)
    for y in range(5, 28, 7):
        c.rect(16 - w - 1.5, y, 16 + w + 1.5, y + 2, LIGHT)
    c.mirror()


def _missile(c: Canvas, r: np.random.Generator) -> None:
    fin = r.uniform(8.5, 10.5)
    c.poly([(13.5, 18), (fin, 25), (13.5, 23)], DARK)
    c.rect(13, 8, 19, 24, HULL)
    c.poly([(13, 8), (16, 1.5), (19, 8)], ACCENT)
    c.poly([(14, 24), (16, 31), (18, 24)], GLOW)
    c.rect(13, 12, 19, 13.5, WHITE)
    c.mirror()


def _plasma(c: Canvas, r: np.random.Generator) -> None:
    for _ in range(5):  # tendrils: irregular on purpose
        a, d = r.uniform(0, 2 * math.pi), r.uniform(8.0, 11.0)
        x, y = 16 + d * math.cos(a), 16 + d * math.sin(a)
        c.ellipse(x - 2.5, y - 2.5, x + 2.5, y + 2.5, HULL)
    c.ellipse(6, 6, 26, 26, HULL)
    c.ellipse(9, 9, 23, 23, LIGHT)
    c.ellipse(12, 12, 20, 20, WHITE)


def _laser(c: Canvas, r: np.random.Generator) -> None:
    w = r.uniform(2.5, 3.5)
    c.poly([(16, 1), (16 + w, 8), (16 + w, 24), (16, 31), (16 - w, 24), (16 - w, 8)], HULL)
    c.rect(15, 4, 17, 28, WHITE)
    c.mirror()


# ---- environment (one direction) ------------------------------------------------------------------
def _blob(c: Canvas, r: np.random.Generator, radius: float, jag: float, n: int) -> None:
    angles = np.sort(r.uniform(0, 2 * math.pi, n))
    c.poly([(16 + radius * (1 - jag * r.random()) * math.cos(a), 16 + radius * (1 - jag * r.random())
             * math.sin(a)) for a in angles], HULL)


def _asteroid(c: Canvas, r: np.random.Generator) -> None:
    _blob(c, r, 13.5, 0.3, int(r.integers(9, 13)))
    for _ in range(int(r.integers(2, 5))):
        x, y, s = r.uniform(10, 22), r.uniform(10, 22), r.uniform(2.0, 3.5)
        c.ellipse(x - s, y - s, x + s, y + s, DARK)
        c.ellipse(x - s, y - s, x + s * 0.2, y + s * 0.2, SHADE)


def _debris(c: Canvas, r: np.random.Generator) -> None:
    for i in range(int(r.integers(3, 6))):
        a, d = r.uniform(0, 2 * math.pi), (0 if i == 0 else r.uniform(6.0, 10.0))
        x, y, s = 16 + d * math.cos(a), 16 + d * math.sin(a), r.uniform(3.0, 6.0) if i else 7.0
        pts = [(x + s * math.cos(t), y + s * math.sin(t)) for t in np.sort(r.uniform(0, 2 * math.pi, 4))]
        c.poly(pts, HULL if i % 2 == 0 else LIGHT)
        c.poly([pts[0], pts[1], (x, y)], ACCENT if i == 0 else SHADE)


def _station_env(c: Canvas, r: np.random.Generator) -> None:
    reach = r.uniform(1.5, 4.0)
    c.rect(15, 2, 17, 30, DARK)
    c.rect(reach, 12, 10, 20, ACCENT)
    for x in np.arange(reach + 2, 10, 2.5):
        c.rect(x, 12, x + 0.6, 20, DARK)
    c.rect(10, 15, 12, 17, DARK)
    c.rect(11, 10, 21, 22, HULL)
    c.rect(13, 4, 19, 9, HULL)
    c.rect(13, 23, 19, 28, HULL)
    c.rect(13.5, 13, 18.5, 19, GLASS)
    c.mirror()


def _portal(c: Canvas, r: np.random.Generator) -> None:
    inner = r.uniform(7.5, 9.0)
    c.ellipse(3, 3, 29, 29, HULL)
    c.ellipse(16 - inner - 1, 16 - inner - 1, 16 + inner + 1, 16 + inner + 1, DARK)
    c.ellipse(16 - inner, 16 - inner, 16 + inner, 16 + inner, ACCENT)
    c.ellipse(16 - inner * 0.6, 16 - inner * 0.6, 16 + inner * 0.6, 16 + inner * 0.6, LIGHT)
    c.ellipse(13.5, 13.5, 18.5, 18.5, WHITE)
    for x, y in ((16, 4.5), (16, 27.5), (4.5, 16), (27.5, 16)):
        c.rect(x - 1.5, y - 1.5, x + 1.5, y + 1.5, GLOW)


def _nebula(c: Canvas, r: np.random.Generator) -> None:
    for label in (SHADE, HULL, LIGHT):
        for _ in range(4):
            x, y = r.uniform(8, 24), r.uniform(8, 24)
            s = r.uniform(4.0, 7.5) * (1.0 if label == SHADE else 0.7)
            c.ellipse(x - s, y - s * 0.8, x + s, y + s * 0.8, label)
    for _ in range(4):
        x, y = r.uniform(9, 23), r.uniform(9, 23)
        c.rect(x, y, x + 1, y + 1, WHITE)


def _star(c: Canvas, r: np.random.Generator) -> None:
    long_, short = r.uniform(13.0, 14.5), r.uniform(7.0, 10.0)
    for rad, label, w in ((long_, HULL, 2.5), (short, LIGHT, 2.0)):
        d = rad if label == HULL else rad / math.sqrt(2)
        if label == HULL:
            c.poly([(16, 16 - d), (16 + w, 16), (16, 16 + d), (16 - w, 16)], label)
            c.poly([(16 - d, 16), (16, 16 - w), (16 + d, 16), (16, 16 + w)], label)
        else:
            c.poly([(16 - d, 16 - d), (16 + w, 16 - w), (16 + d, 16 + d), (16 - w, 16 + w)], label)
            c.poly([(16 + d, 16 - d), (16 + w, 16 + w), (16 - d, 16 + d), (16 - w, 16 - w)], label)
    c.ellipse(10, 10, 22, 22, HULL)
    c.ellipse(12, 12, 20, 20, WHITE)


def _planet(c: Canvas, r: np.random.Generator) -> None:
    ringed = r.random() < 0.5
    rad = 9.5 if ringed else 13.0
    c.ellipse(16 - rad, 16 - rad, 16 + rad, 16 + rad, HULL)
    labels = c.labels()
    x, y = c.coords()
    disc = labels == HULL
    bands = np.floor((y - 16 + r.uniform(0, 3)) / r.uniform(3.0, 4.5)).astype(int) % 2 == 0
    labels[disc & bands] = LIGHT
    labels[disc & ((x - 16 + rad * 0.45) ** 2 + (y - 16 + rad * 0.45) ** 2 > (rad * 1.05) ** 2)] = SHADE
    if ringed:
        ring = ((x - 16) / 14.5) ** 2 + ((y - 16) / 4.0) ** 2
        front = (ring <= 1) & (ring >= 0.55) & ~(disc & (y < 16))
        labels[front] = ACCENT
    c.set(labels)


SHIPS: dict[str, Painter] = {"fighter": _fighter, "bomber": _bomber, "scout": _scout,
                             "cruiser": _cruiser, "carrier": _carrier, "station": _station_ship}
PROJECTILES: dict[str, Painter] = {"bullet": _bullet, "bomb": _bomb, "beam": _beam, "missile": _missile,
                                   "plasma": _plasma, "laser": _laser}
ENVIRONMENT: dict[str, Painter] = {"asteroid": _asteroid, "debris": _debris, "station": _station_env,
                                   "portal": _portal, "nebula": _nebula, "star": _star, "planet": _planet}
PAINTERS = {"vehicle": SHIPS, "projectile": PROJECTILES, "environment": ENVIRONMENT}
NO_OUTLINE = {"star", "nebula", "beam", "laser", "plasma"}  # glowing things: no dark edge
