"""Drawing of the synthetic world's object classes: one PIL-primitive picture per class.

Each class is drawn into its own transparent RGBA box; the alpha channel is the object's
exact pixel mask, which the scene renderer uses for occlusion bookkeeping. The shape
identifies the class; colours vary within a small per-class palette.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

Color = Tuple[int, int, int]
Box = Tuple[float, float, float, float]

CLEAR = (0, 0, 0, 0)


class _Canvas:
    """An ImageDraw over a w x h box that takes coordinates as fractions of the box."""

    def __init__(self, draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
        self.draw = draw
        self.w = width
        self.h = height

    def p(self, fx: float, fy: float) -> Tuple[float, float]:
        return (fx * (self.w - 1), fy * (self.h - 1))

    def box(self, x0: float, y0: float, x1: float, y1: float) -> Box:
        return (*self.p(x0, y0), *self.p(x1, y1))

    def line_width(self, fraction: float) -> int:
        return max(1, int(round(fraction * min(self.w, self.h))))

    def ellipse(self, box: Sequence[float], fill) -> None:
        self.draw.ellipse(self.box(*box), fill=fill)

    def ring(self, box: Sequence[float], color, width: float) -> None:
        self.draw.ellipse(self.box(*box), outline=color, width=self.line_width(width))

    def rect(self, box: Sequence[float], fill) -> None:
        self.draw.rectangle(self.box(*box), fill=fill)

    def poly(self, points: Sequence[Tuple[float, float]], fill) -> None:
        self.draw.polygon([self.p(x, y) for x, y in points], fill=fill)

    def line(self, points: Sequence[Tuple[float, float]], fill, width: float) -> None:
        self.draw.line([self.p(x, y) for x, y in points], fill=fill, width=self.line_width(width))

    def pie(self, box: Sequence[float], start: float, end: float, fill) -> None:
        self.draw.pieslice(self.box(*box), start, end, fill=fill)


def _jitter(rng: np.random.Generator, color: Color, amount: int = 18) -> Tuple[int, int, int, int]:
    """A palette colour moved a little in each channel, as an opaque RGBA tuple."""
    shifted = np.clip(np.asarray(color) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return (int(shifted[0]), int(shifted[1]), int(shifted[2]), 255)


def _pick(rng: np.random.Generator, palette: Sequence[Color]) -> Tuple[int, int, int, int]:
    return _jitter(rng, palette[int(rng.integers(len(palette)))])


DARK = [(30, 30, 30), (50, 40, 35)]
WHITE = [(245, 245, 245), (235, 235, 225)]
BROWN = [(120, 75, 35), (100, 60, 30), (140, 90, 45)]
YELLOW = [(250, 210, 30), (255, 185, 20), (245, 230, 60)]
GREEN = [(40, 150, 50), (30, 120, 40), (80, 170, 40)]
RED = [(220, 30, 40), (200, 20, 60), (235, 60, 50)]
BRIGHT = [(220, 40, 40), (40, 90, 220), (40, 170, 60), (240, 150, 20), (160, 50, 190), (20, 170, 190)]


def _sun(c: _Canvas, rng: np.random.Generator) -> None:
    color = _pick(rng, YELLOW)
    c.ellipse((0.22, 0.22, 0.78, 0.78), color)
    rays = 8
    phase = rng.uniform(0, math.pi / rays)
    for k in range(rays):
        angle = phase + 2 * math.pi * k / rays
        inner = (0.5 + 0.33 * math.cos(angle), 0.5 + 0.33 * math.sin(angle))
        outer = (0.5 + 0.5 * math.cos(angle), 0.5 + 0.5 * math.sin(angle))
        c.line([inner, outer], color, 0.08)


def _moon(c: _Canvas, rng: np.random.Generator) -> None:
    c.ellipse((0.05, 0.05, 0.95, 0.95), _pick(rng, [(245, 240, 190), (230, 230, 230), (250, 225, 120)]))
    shift = rng.uniform(0.25, 0.35)
    c.ellipse((0.05 + shift, 0.0, 1.0 + shift, 0.85), CLEAR)


def _star(c: _Canvas, rng: np.random.Generator) -> None:
    phase = -math.pi / 2 + rng.uniform(-0.2, 0.2)
    points = []
    for k in range(10):
        radius = 0.5 if k % 2 == 0 else 0.2
        angle = phase + math.pi * k / 5
        points.append((0.5 + radius * math.cos(angle), 0.52 + radius * math.sin(angle)))
    c.poly(points, _pick(rng, YELLOW + [(250, 250, 160)]))


def _cloud(c: _Canvas, rng: np.random.Generator) -> None:
    color = _pick(rng, WHITE + [(210, 215, 225)])
    for box in ((0.0, 0.4, 0.45, 0.9), (0.22, 0.1, 0.68, 0.75), (0.5, 0.3, 0.95, 0.9), (0.15, 0.5, 0.85, 0.95)):
        c.ellipse(box, color)


def _tree(c: _Canvas, rng: np.random.Generator) -> None:
    c.rect((0.42, 0.55, 0.58, 1.0), _pick(rng, BROWN))
    c.ellipse((0.08, 0.0, 0.92, 0.7), _pick(rng, GREEN))


def _house(c: _Canvas, rng: np.random.Generator) -> None:
    c.rect((0.15, 0.45, 0.85, 1.0), _pick(rng, [(230, 210, 160), (170, 200, 230), (240, 240, 230), (230, 180, 120)]))
    c.poly([(0.02, 0.48), (0.5, 0.02), (0.98, 0.48)], _pick(rng, RED + [(150, 60, 40)]))
    c.rect((0.42, 0.68, 0.6, 1.0), _pick(rng, BROWN))
    c.rect((0.22, 0.55, 0.36, 0.68), (120, 180, 230, 255))


def _car(c: _Canvas, rng: np.random.Generator) -> None:
    body = _pick(rng, BRIGHT)
    c.poly([(0.22, 0.48), (0.32, 0.12), (0.7, 0.12), (0.82, 0.48)], body)
    c.poly([(0.3, 0.45), (0.37, 0.2), (0.65, 0.2), (0.73, 0.45)], (170, 220, 240, 255))
    c.rect((0.0, 0.45, 1.0, 0.8), body)
    c.ellipse((0.1, 0.62, 0.34, 1.0), _pick(rng, DARK))
    c.ellipse((0.66, 0.62, 0.9, 1.0), _pick(rng, DARK))


def _fish(c: _Canvas, rng: np.random.Generator) -> None:
    color = _pick(rng, [(250, 130, 20), (40, 120, 220), (230, 200, 30), (220, 60, 120)])
    c.poly([(0.0, 0.12), (0.32, 0.5), (0.0, 0.88)], color)
    c.ellipse((0.2, 0.18, 1.0, 0.82), color)
    c.ellipse((0.72, 0.35, 0.82, 0.48), (20, 20, 20, 255))


def _boat(c: _Canvas, rng: np.random.Generator) -> None:
    c.poly([(0.0, 0.68), (1.0, 0.68), (0.8, 0.98), (0.2, 0.98)], _pick(rng, BROWN + [(200, 40, 40)]))
    c.line([(0.5, 0.02), (0.5, 0.7)], (60, 40, 20, 255), 0.05)
    c.poly([(0.54, 0.04), (0.54, 0.62), (0.95, 0.62)], _pick(rng, WHITE + [(240, 220, 120)]))
    c.poly([(0.46, 0.14), (0.46, 0.62), (0.15, 0.62)], _pick(rng, WHITE + [(240, 220, 120)]))


def _flower(c: _Canvas, rng: np.random.Generator) -> None:
    c.line([(0.5, 0.45), (0.5, 1.0)], _pick(rng, GREEN), 0.08)
    c.poly([(0.5, 0.8), (0.75, 0.62), (0.72, 0.75)], _pick(rng, GREEN))
    petal = _pick(rng, [(240, 90, 170), (170, 70, 220), (230, 40, 60), (250, 250, 250), (60, 110, 240)])
    petals = 6
    phase = rng.uniform(0, math.pi)
    for k in range(petals):
        angle = phase + 2 * math.pi * k / petals
        x, y = 0.5 + 0.22 * math.cos(angle), 0.32 + 0.22 * math.sin(angle)
        c.ellipse((x - 0.14, y - 0.14, x + 0.14, y + 0.14), petal)
    c.ellipse((0.39, 0.21, 0.61, 0.43), _pick(rng, YELLOW))


def _umbrella(c: _Canvas, rng: np.random.Generator) -> None:
    c.pie((0.0, 0.0, 1.0, 0.9), 180, 360, _pick(rng, BRIGHT))
    for x in (0.125, 0.375, 0.625, 0.875):
        c.ellipse((x - 0.125, 0.34, x + 0.125, 0.56), CLEAR)
    c.line([(0.5, 0.1), (0.5, 0.85)], (40, 40, 40, 255), 0.06)
    c.draw.arc(c.box(0.3, 0.72, 0.52, 0.98), 0, 180, fill=(40, 40, 40, 255), width=c.line_width(0.06))


def _heart(c: _Canvas, rng: np.random.Generator) -> None:
    color = _pick(rng, RED + [(240, 100, 160)])
    c.ellipse((0.02, 0.05, 0.54, 0.55), color)
    c.ellipse((0.46, 0.05, 0.98, 0.55), color)
    c.poly([(0.05, 0.42), (0.95, 0.42), (0.5, 0.97)], color)


def _ball(c: _Canvas, rng: np.random.Generator) -> None:
    colors = [(230, 40, 40, 255), (250, 250, 250, 255), (40, 90, 230, 255), (250, 210, 30, 255)]
    phase = rng.uniform(0, 60)
    for k in range(6):
        c.pie((0.04, 0.04, 0.96, 0.96), phase + 60 * k, phase + 60 * (k + 1), colors[k % 4])
    c.ellipse((0.42, 0.42, 0.58, 0.58), (250, 250, 250, 255))


def _kite(c: _Canvas, rng: np.random.Generator) -> None:
    c.line([(0.5, 0.68), (0.58, 0.84), (0.48, 1.0)], (40, 40, 40, 255), 0.04)
    c.poly([(0.5, 0.0), (0.88, 0.3), (0.5, 0.7), (0.12, 0.3)], _pick(rng, BRIGHT))
    c.line([(0.5, 0.0), (0.5, 0.7)], (40, 40, 40, 255), 0.04)
    c.line([(0.12, 0.3), (0.88, 0.3)], (40, 40, 40, 255), 0.04)
    bow = _pick(rng, YELLOW)
    c.poly([(0.5, 0.8), (0.66, 0.74), (0.66, 0.88)], bow)


def _balloon(c: _Canvas, rng: np.random.Generator) -> None:
    c.line([(0.5, 0.72), (0.44, 0.86), (0.52, 1.0)], (60, 60, 60, 255), 0.03)
    color = _pick(rng, BRIGHT)
    c.ellipse((0.2, 0.0, 0.8, 0.72), color)
    c.poly([(0.5, 0.68), (0.43, 0.78), (0.57, 0.78)], color)
    c.ellipse((0.32, 0.12, 0.42, 0.26), (250, 250, 250, 255))


def _bird(c: _Canvas, rng: np.random.Generator) -> None:
    color = _pick(rng, [(40, 90, 200), (140, 80, 40), (200, 40, 40), (60, 60, 70)])
    c.poly([(0.0, 0.35), (0.28, 0.52), (0.0, 0.7)], color)
    c.ellipse((0.18, 0.35, 0.75, 0.8), color)
    c.ellipse((0.58, 0.18, 0.88, 0.52), color)
    c.poly([(0.86, 0.28), (1.0, 0.36), (0.86, 0.44)], (250, 160, 20, 255))
    c.ellipse((0.72, 0.28, 0.79, 0.36), (250, 250, 250, 255))
    c.poly([(0.28, 0.55), (0.45, 0.05), (0.6, 0.55)], _jitter(rng, tuple(int(v * 0.7) for v in color[:3])))


def _mountain(c: _Canvas, rng: np.random.Generator) -> None:
    c.poly([(0.0, 1.0), (0.5, 0.02), (1.0, 1.0)], _pick(rng, [(120, 110, 100), (100, 90, 120), (110, 130, 90)]))
    c.poly([(0.5, 0.02), (0.33, 0.36), (0.42, 0.3), (0.5, 0.38), (0.58, 0.3), (0.67, 0.36)], (250, 250, 250, 255))


def _key(c: _Canvas, rng: np.random.Generator) -> None:
    color = _pick(rng, [(230, 190, 40), (190, 190, 200), (200, 150, 60)])
    c.ring((0.0, 0.1, 0.42, 0.9), color, 0.3)
    c.rect((0.38, 0.4, 1.0, 0.6), color)
    c.rect((0.72, 0.55, 0.8, 0.85), color)
    c.rect((0.88, 0.55, 0.96, 0.95), color)


def _cup(c: _Canvas, rng: np.random.Generator) -> None:
    color = _pick(rng, BRIGHT + WHITE)
    c.ring((0.55, 0.28, 0.98, 0.75), color, 0.12)
    c.poly([(0.05, 0.12), (0.78, 0.12), (0.7, 0.98), (0.13, 0.98)], color)
    c.rect((0.05, 0.1, 0.78, 0.18), (60, 40, 30, 255))


def _clock(c: _Canvas, rng: np.random.Generator) -> None:
    c.ellipse((0.0, 0.0, 1.0, 1.0), _pick(rng, [(60, 60, 60), (150, 40, 40), (40, 60, 140)]))
    c.ellipse((0.1, 0.1, 0.9, 0.9), _pick(rng, [(250, 250, 245), (245, 235, 200)]))
    hand = (20, 20, 20, 255)
    hour = rng.uniform(0, 2 * math.pi)
    minute = rng.uniform(0, 2 * math.pi)
    c.line([(0.5, 0.5), (0.5 + 0.22 * math.cos(hour), 0.5 + 0.22 * math.sin(hour))], hand, 0.08)
    c.line([(0.5, 0.5), (0.5 + 0.34 * math.cos(minute), 0.5 + 0.34 * math.sin(minute))], hand, 0.05)
    for k in range(4):
        x, y = 0.5 + 0.33 * math.cos(k * math.pi / 2), 0.5 + 0.33 * math.sin(k * math.pi / 2)
        c.ellipse((x - 0.04, y - 0.04, x + 0.04, y + 0.04), hand)


def _cactus(c: _Canvas, rng: np.random.Generator) -> None:
    color = _pick(rng, GREEN)
    c.draw.rounded_rectangle(c.box(0.36, 0.0, 0.64, 1.0), radius=c.line_width(0.14), fill=color)
    c.draw.rounded_rectangle(c.box(0.05, 0.15, 0.25, 0.58), radius=c.line_width(0.1), fill=color)
    c.rect((0.12, 0.45, 0.4, 0.58), color)
    c.draw.rounded_rectangle(c.box(0.75, 0.28, 0.95, 0.7), radius=c.line_width(0.1), fill=color)
    c.rect((0.6, 0.58, 0.88, 0.7), color)


def _lightning(c: _Canvas, rng: np.random.Generator) -> None:
    points = [(0.6, 0.0), (0.15, 0.55), (0.45, 0.55), (0.25, 1.0), (0.88, 0.4), (0.56, 0.4), (0.82, 0.0)]
    c.poly(points, _pick(rng, YELLOW + [(250, 250, 200)]))


def _mushroom(c: _Canvas, rng: np.random.Generator) -> None:
    c.rect((0.36, 0.45, 0.64, 1.0), _pick(rng, [(240, 230, 200), (230, 215, 180)]))
    c.pie((0.0, 0.05, 1.0, 0.95), 180, 360, _pick(rng, RED + [(150, 90, 50)]))
    for x, y in ((0.3, 0.3), (0.55, 0.18), (0.72, 0.36)):
        c.ellipse((x - 0.07, y - 0.07, x + 0.07, y + 0.07), (250, 250, 250, 255))


def _tent(c: _Canvas, rng: np.random.Generator) -> None:
    c.poly([(0.0, 1.0), (0.5, 0.05), (1.0, 1.0)], _pick(rng, [(240, 120, 20), (40, 140, 70), (50, 90, 200)]))
    c.poly([(0.36, 1.0), (0.5, 0.45), (0.64, 1.0)], (40, 30, 25, 255))
    c.line([(0.5, 0.05), (0.5, 0.0)], (40, 30, 25, 255), 0.06)


DrawFn = Callable[[_Canvas, np.random.Generator], None]

# name -> (draw function, width / height aspect of the object's box)
_SHAPES: Dict[str, Tuple[DrawFn, float]] = {
    "sun": (_sun, 1.0),
    "moon": (_moon, 1.0),
    "star": (_star, 1.0),
    "cloud": (_cloud, 1.5),
    "tree": (_tree, 0.8),
    "house": (_house, 1.0),
    "car": (_car, 1.6),
    "fish": (_fish, 1.5),
    "boat": (_boat, 1.1),
    "flower": (_flower, 0.8),
    "umbrella": (_umbrella, 1.0),
    "heart": (_heart, 1.0),
    "ball": (_ball, 1.0),
    "kite": (_kite, 0.8),
    "balloon": (_balloon, 0.7),
    "bird": (_bird, 1.3),
    "mountain": (_mountain, 1.3),
    "key": (_key, 1.8),
    "cup": (_cup, 1.0),
    "clock": (_clock, 1.0),
    "cactus": (_cactus, 0.8),
    "lightning": (_lightning, 0.7),
    "mushroom": (_mushroom, 1.0),
    "tent": (_tent, 1.2),
}

SHAPE_NAMES: List[str] = list(_SHAPES)


def aspect(name: str) -> float:
    """Width / height of the box the class is drawn in."""
    return _SHAPES[name][1]


def draw_object(name: str, width: int, height: int, seed: int, flip: bool = False) -> np.ndarray:
    """Draw class `name` alone in a width x height box: RGBA uint8 [height, width, 4].

    Alpha 255 marks the object's pixels, 0 everything else. Deterministic in (name, size,
    seed, flip), so a scene can be re-drawn object by object to check what it shows.
    """
    if name not in _SHAPES:
        raise KeyError(f"unknown synthetic object class {name!r}; known: {SHAPE_NAMES}")
    layer = Image.new("RGBA", (width, height), CLEAR)
    _SHAPES[name][0](_Canvas(ImageDraw.Draw(layer), width, height), np.random.default_rng(seed))
    pixels = np.asarray(layer)
    if flip:
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels)
