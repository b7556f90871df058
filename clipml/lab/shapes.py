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


METAL = [(190, 195, 205), (170, 175, 185), (215, 215, 220)]
BLACK = (20, 20, 20, 255)


def _shade(rng: np.random.Generator, color: Sequence[int], factor: float) -> Tuple[int, int, int, int]:
    """A darker (factor < 1) or lighter version of a drawn colour, lightly jittered."""
    return _jitter(rng, tuple(int(min(255, v * factor)) for v in color[:3]), 8)


def _apple(c: _Canvas, rng: np.random.Generator) -> None:
    color = _pick(rng, RED + [(120, 190, 40), (230, 200, 40)])
    c.ellipse((0.02, 0.18, 0.62, 1.0), color)
    c.ellipse((0.38, 0.18, 0.98, 1.0), color)
    c.ellipse((0.3, 0.1, 0.7, 0.3), CLEAR)
    c.line([(0.5, 0.3), (0.56, 0.02)], _pick(rng, BROWN), 0.08)
    lean = rng.uniform(-0.04, 0.04)
    c.poly([(0.56, 0.16), (0.72, 0.0 + lean), (0.9, 0.06), (0.74, 0.18)], _pick(rng, GREEN))


def _orange(c: _Canvas, rng: np.random.Generator) -> None:
    c.ellipse((0.04, 0.1, 0.96, 1.0), _pick(rng, [(250, 140, 20), (240, 120, 10), (250, 160, 40)]))
    c.ellipse((0.46, 0.08, 0.56, 0.18), _pick(rng, [(90, 110, 30)]))
    c.poly([(0.52, 0.12), (0.66, 0.0), (0.8, 0.04), (0.66, 0.14)], _pick(rng, GREEN))
    for x, y in ((0.3, 0.42), (0.62, 0.5), (0.42, 0.72), (0.72, 0.76)):
        c.ellipse((x - 0.02, y - 0.02, x + 0.02, y + 0.02), (225, 110, 10, 255))


def _banana(c: _Canvas, rng: np.random.Generator) -> None:
    bend = rng.uniform(0.4, 0.48)
    top, bottom = [], []
    for k in range(17):
        t = k / 16
        x = 0.06 + 0.88 * t
        middle = 0.2 + bend * math.sin(math.pi * t)
        half = 0.07 + 0.17 * math.sin(math.pi * t)
        top.append((x, middle - half))
        bottom.append((x, middle + half))
    c.poly(top + bottom[::-1], _pick(rng, YELLOW + [(200, 220, 60)]))
    c.line([(0.08, 0.2), (0.0, 0.06)], _pick(rng, [(110, 90, 40), (90, 110, 40)]), 0.1)
    c.ellipse((0.9, 0.14, 0.98, 0.26), (70, 50, 30, 255))


def _bottle(c: _Canvas, rng: np.random.Generator) -> None:
    glass = _pick(rng, [(40, 130, 60), (120, 70, 30), (120, 170, 210), (30, 90, 50)])
    c.draw.rounded_rectangle(c.box(0.1, 0.4, 0.9, 1.0), radius=c.line_width(0.15), fill=glass)
    c.poly([(0.1, 0.46), (0.34, 0.24), (0.66, 0.24), (0.9, 0.46)], glass)
    c.rect((0.34, 0.06, 0.66, 0.26), glass)
    c.rect((0.3, 0.0, 0.7, 0.08), _pick(rng, [(200, 170, 40), (200, 40, 40), (30, 30, 30)]))
    c.rect((0.1, 0.56 + rng.uniform(0, 0.06), 0.9, 0.8), _pick(rng, WHITE + [(240, 220, 150)]))


def _wine_glass(c: _Canvas, rng: np.random.Generator) -> None:
    glass = _pick(rng, [(215, 225, 235), (200, 215, 230)])
    c.rect((0.06, 0.0, 0.94, 0.3), glass)
    c.pie((0.06, 0.0, 0.94, 0.6), 0, 180, glass)
    wine = _pick(rng, [(150, 20, 40), (120, 10, 50), (240, 220, 120)])
    c.rect((0.07, rng.uniform(0.12, 0.26), 0.93, 0.3), wine)
    c.pie((0.07, 0.0, 0.93, 0.59), 0, 180, wine)
    c.line([(0.5, 0.56), (0.5, 0.94)], glass, 0.14)
    c.ellipse((0.12, 0.86, 0.88, 1.0), glass)


def _fork(c: _Canvas, rng: np.random.Generator) -> None:
    metal = _pick(rng, METAL)
    for x in (0.06, 0.3, 0.54, 0.78):
        c.rect((x, 0.0, x + 0.16, 0.32), metal)
    c.draw.rounded_rectangle(c.box(0.06, 0.28, 0.94, 0.44), radius=c.line_width(0.3), fill=metal)
    c.poly([(0.2, 0.42), (0.8, 0.42), (0.62, 0.56), (0.38, 0.56)], metal)
    handle = metal if rng.random() < 0.5 else _pick(rng, DARK + BROWN)
    c.draw.rounded_rectangle(c.box(0.32, 0.54, 0.68, 1.0), radius=c.line_width(0.3), fill=handle)


def _knife(c: _Canvas, rng: np.random.Generator) -> None:
    c.poly([(0.18, 0.58), (0.18, 0.04), (0.45, 0.0), (0.84, 0.22), (0.84, 0.58)], _pick(rng, METAL))
    c.rect((0.1, 0.55, 0.92, 0.62), _pick(rng, [(120, 120, 130)]))
    c.draw.rounded_rectangle(c.box(0.14, 0.6, 0.88, 1.0), radius=c.line_width(0.3), fill=_pick(rng, DARK + BROWN))


def _spoon(c: _Canvas, rng: np.random.Generator) -> None:
    metal = _pick(rng, METAL + [(220, 190, 120)])
    c.ellipse((0.02, 0.0, 0.98, 0.44), metal)
    c.poly([(0.4, 0.4), (0.6, 0.4), (0.72, 0.9), (0.28, 0.9)], metal)
    c.ellipse((0.26, 0.8, 0.74, 1.0), metal)
    c.ellipse((0.24, 0.06, 0.54, 0.2), _shade(rng, metal, 1.15))


def _book(c: _Canvas, rng: np.random.Generator) -> None:
    cover = _pick(rng, BRIGHT + BROWN)
    c.poly([(0.0, 0.1), (0.5, 0.2), (1.0, 0.1), (1.0, 0.94), (0.5, 1.0), (0.0, 0.94)], cover)
    page = _pick(rng, WHITE + [(245, 235, 200)])
    c.poly([(0.04, 0.02), (0.48, 0.12), (0.48, 0.92), (0.04, 0.84)], page)
    c.poly([(0.52, 0.12), (0.96, 0.02), (0.96, 0.84), (0.52, 0.92)], page)
    ink = (110, 110, 110, 255)
    for k in range(4):
        y = 0.26 + 0.14 * k
        c.line([(0.1, y - 0.02), (0.42, y + 0.05)], ink, 0.04)
        c.line([(0.58, y + 0.05), (0.9, y - 0.02)], ink, 0.04)


def _lamp(c: _Canvas, rng: np.random.Generator) -> None:
    c.poly([(0.24, 0.0), (0.76, 0.0), (0.98, 0.46), (0.02, 0.46)],
           _pick(rng, [(245, 230, 180), (220, 60, 50), (60, 140, 90), (70, 110, 200)]))
    stand = _pick(rng, [(200, 160, 60), (60, 60, 60), (170, 170, 180)])
    c.rect((0.43, 0.44, 0.57, 0.9), stand)
    c.ellipse((0.16, 0.84, 0.84, 1.0), stand)
    c.line([(0.7, 0.46), (0.7, 0.62)], (60, 60, 60, 255), 0.04)


def _chair(c: _Canvas, rng: np.random.Generator) -> None:
    wood = _pick(rng, BROWN + [(180, 50, 40), (60, 110, 170)])
    c.rect((0.1, 0.0, 0.3, 1.0), wood)
    c.rect((0.1, 0.08, 0.42, 0.16), wood)
    c.rect((0.1, 0.26, 0.42, 0.34), wood)
    c.rect((0.1, 0.5, 0.96, 0.64), _shade(rng, wood, 1.2))
    c.rect((0.78, 0.5, 0.94, 1.0), wood)
    c.rect((0.3, 0.8, 0.78, 0.86), wood)


def _bicycle(c: _Canvas, rng: np.random.Generator) -> None:
    tyre = _pick(rng, DARK)
    c.ring((0.0, 0.38, 0.4, 1.0), tyre, 0.15)
    c.ring((0.6, 0.38, 1.0, 1.0), tyre, 0.15)
    frame = _pick(rng, BRIGHT)
    rear, crank, seat, head, front = (0.2, 0.69), (0.48, 0.69), (0.38, 0.3), (0.76, 0.3), (0.8, 0.69)
    c.line([rear, seat, crank, rear], frame, 0.1)
    c.line([seat, head, crank], frame, 0.1)
    c.line([(0.74, 0.14), head, front], frame, 0.1)
    c.line([(0.68, 0.12), (0.82, 0.12)], (40, 40, 40, 255), 0.1)
    c.rect((0.28, 0.18, 0.46, 0.28), (40, 40, 40, 255))


def _bus(c: _Canvas, rng: np.random.Generator) -> None:
    body = _pick(rng, YELLOW + [(220, 40, 40), (40, 90, 200), (40, 150, 80)])
    c.draw.rounded_rectangle(c.box(0.0, 0.02, 1.0, 0.86), radius=c.line_width(0.12), fill=body)
    glass = (170, 220, 240, 255)
    windows = int(rng.integers(4, 6))
    step = 0.78 / windows
    for k in range(windows):
        x = 0.04 + k * step
        c.rect((x, 0.14, x + step - 0.04, 0.46), glass)
    c.rect((0.86, 0.14, 0.96, 0.74), glass)
    c.rect((0.0, 0.58, 0.84, 0.62), _shade(rng, body, 0.6))
    c.ellipse((0.1, 0.66, 0.26, 1.0), _pick(rng, DARK))
    c.ellipse((0.66, 0.66, 0.82, 1.0), _pick(rng, DARK))


def _train(c: _Canvas, rng: np.random.Generator) -> None:
    body = _pick(rng, [(200, 30, 40), (40, 110, 60), (40, 60, 160), (50, 50, 55)])
    c.rect((0.0, 0.08, 0.32, 0.78), body)
    c.rect((0.0, 0.02, 0.36, 0.1), _shade(rng, body, 0.6))
    c.rect((0.08, 0.18, 0.24, 0.4), (250, 220, 130, 255))
    c.rect((0.3, 0.34, 0.92, 0.78), body)
    c.rect((0.72, 0.08, 0.82, 0.36), _pick(rng, DARK))
    c.rect((0.68, 0.04, 0.86, 0.12), _pick(rng, DARK))
    c.poly([(0.9, 0.6), (1.0, 0.9), (0.86, 0.9)], _pick(rng, DARK))
    wheel = _pick(rng, DARK)
    for x in (0.04, 0.3, 0.56):
        c.ellipse((x, 0.64, x + 0.22, 1.0), wheel)
        c.ellipse((x + 0.08, 0.77, x + 0.14, 0.87), (200, 200, 200, 255))


def _airplane(c: _Canvas, rng: np.random.Generator) -> None:
    color = _pick(rng, WHITE + [(190, 200, 215), (60, 100, 200)])
    sweep = rng.uniform(-0.04, 0.04)
    c.poly([(0.42, 0.46), (0.3 + sweep, 0.0), (0.42 + sweep, 0.0), (0.66, 0.46)], color)
    c.poly([(0.42, 0.54), (0.3 + sweep, 1.0), (0.42 + sweep, 1.0), (0.66, 0.54)], color)
    c.poly([(0.04, 0.46), (0.0, 0.2), (0.08, 0.2), (0.18, 0.46)], color)
    c.poly([(0.04, 0.54), (0.0, 0.8), (0.08, 0.8), (0.18, 0.54)], color)
    c.ellipse((0.0, 0.38, 1.0, 0.62), color)
    c.ellipse((0.84, 0.44, 0.94, 0.56), (60, 80, 110, 255))


def _pine_tree(c: _Canvas, rng: np.random.Generator) -> None:
    c.rect((0.42, 0.84, 0.58, 1.0), _pick(rng, BROWN))
    green = _pick(rng, [(20, 100, 50), (30, 120, 60), (20, 80, 40)])
    c.poly([(0.5, 0.34), (1.0, 0.88), (0.0, 0.88)], green)
    c.poly([(0.5, 0.14), (0.88, 0.6), (0.12, 0.6)], green)
    c.poly([(0.5, 0.0), (0.76, 0.32), (0.24, 0.32)], green)


def _snowman(c: _Canvas, rng: np.random.Generator) -> None:
    snow = _pick(rng, WHITE + [(225, 235, 245)])
    c.ellipse((0.04, 0.5, 0.96, 1.0), snow)
    c.ellipse((0.18, 0.26, 0.82, 0.62), snow)
    c.ellipse((0.3, 0.08, 0.7, 0.34), snow)
    hat = _pick(rng, DARK + [(160, 30, 30)])
    c.rect((0.24, 0.08, 0.76, 0.12), hat)
    c.rect((0.36, 0.0, 0.64, 0.1), hat)
    c.poly([(0.5, 0.2), (0.5, 0.25), (0.68, 0.23)], (250, 130, 20, 255))
    for y in (0.38, 0.48, 0.62, 0.74):
        c.ellipse((0.46, y - 0.025, 0.54, y + 0.025), BLACK)


def _butterfly(c: _Canvas, rng: np.random.Generator) -> None:
    wing = _pick(rng, BRIGHT + YELLOW)
    c.ellipse((0.02, 0.04, 0.5, 0.58), wing)
    c.ellipse((0.5, 0.04, 0.98, 0.58), wing)
    lower = _shade(rng, wing, 0.75)
    c.ellipse((0.1, 0.48, 0.5, 0.96), lower)
    c.ellipse((0.5, 0.48, 0.9, 0.96), lower)
    spot = _pick(rng, WHITE + DARK)
    c.ellipse((0.14, 0.18, 0.28, 0.32), spot)
    c.ellipse((0.72, 0.18, 0.86, 0.32), spot)
    c.ellipse((0.45, 0.14, 0.55, 0.9), BLACK)
    c.line([(0.48, 0.16), (0.4, 0.0)], BLACK, 0.04)
    c.line([(0.52, 0.16), (0.6, 0.0)], BLACK, 0.04)


def _turtle(c: _Canvas, rng: np.random.Generator) -> None:
    skin = _pick(rng, [(120, 170, 80), (150, 160, 90), (100, 150, 100)])
    for x in (0.18, 0.6):
        c.ellipse((x, 0.5, x + 0.18, 0.86), skin)
    c.ellipse((0.74, 0.34, 1.0, 0.64), skin)
    c.poly([(0.14, 0.52), (0.0, 0.66), (0.16, 0.62)], skin)
    c.ellipse((0.88, 0.42, 0.93, 0.5), BLACK)
    shell = _pick(rng, [(60, 110, 50), (110, 80, 40), (80, 100, 40)])
    c.pie((0.1, 0.06, 0.86, 1.04), 180, 360, shell)
    c.rect((0.1, 0.52, 0.86, 0.6), _shade(rng, shell, 0.7))
    plate = _shade(rng, shell, 1.35)
    for x, y in ((0.33, 0.38), (0.48, 0.24), (0.63, 0.38)):
        c.ellipse((x - 0.07, y - 0.09, x + 0.07, y + 0.09), plate)


RAINBOW = [(230, 40, 40), (245, 140, 20), (250, 220, 30), (50, 170, 60), (40, 100, 220), (130, 60, 190)]


def _rainbow(c: _Canvas, rng: np.random.Generator) -> None:
    ratio = c.w / max(c.h, 1)
    outer = min(0.98, ratio / 2)
    band = outer * rng.uniform(0.09, 0.105)
    for k, color in enumerate(RAINBOW + [None]):
        r = outer - k * band  # radius in box heights; the box is `ratio` heights wide
        fill = CLEAR if color is None else _jitter(rng, color, 10)
        c.pie((0.5 - r / ratio, 1.0 - r, 0.5 + r / ratio, 1.0 + r), 180, 360, fill)


def _traffic_light(c: _Canvas, rng: np.random.Generator) -> None:
    c.rect((0.4, 0.8, 0.6, 1.0), (70, 70, 70, 255))
    c.draw.rounded_rectangle(c.box(0.04, 0.0, 0.96, 0.84), radius=c.line_width(0.2),
                             fill=_pick(rng, DARK + [(60, 60, 50)]))
    lit = int(rng.integers(3))
    colors = [(240, 30, 30), (250, 200, 20), (40, 220, 60)]
    for k, color in enumerate(colors):
        y = 0.15 + 0.27 * k
        fill = color if k == lit else tuple(v // 3 for v in color)
        c.ellipse((0.2, y - 0.11, 0.8, y + 0.11), (*fill, 255))


def _television(c: _Canvas, rng: np.random.Generator) -> None:
    frame = _pick(rng, DARK + [(90, 90, 95), (140, 140, 145)])
    c.rect((0.42, 0.8, 0.58, 0.94), frame)
    c.draw.rounded_rectangle(c.box(0.22, 0.9, 0.78, 1.0), radius=c.line_width(0.04), fill=frame)
    c.draw.rounded_rectangle(c.box(0.0, 0.0, 1.0, 0.82), radius=c.line_width(0.06), fill=frame)
    c.rect((0.07, 0.08, 0.93, 0.72), _pick(rng, [(60, 120, 200), (80, 170, 210), (70, 90, 140), (90, 160, 100)]))
    c.poly([(0.07, 0.72), (0.07, 0.5), (0.4, 0.3), (0.93, 0.62), (0.93, 0.72)], _pick(rng, [(60, 140, 70), (200, 200, 210)]))


def _candle(c: _Canvas, rng: np.random.Generator) -> None:
    wax = _pick(rng, WHITE + [(240, 230, 190), (220, 50, 60), (80, 120, 210)])
    c.rect((0.2, 0.36, 0.8, 1.0), wax)
    c.ellipse((0.6, 0.32, 0.72, 0.56), wax)
    c.line([(0.5, 0.28), (0.5, 0.38)], BLACK, 0.1)
    flame = _pick(rng, [(250, 150, 20), (250, 120, 10)])
    c.ellipse((0.3, 0.1, 0.7, 0.32), flame)
    c.poly([(0.31, 0.2), (0.5 + rng.uniform(-0.06, 0.06), 0.0), (0.69, 0.2)], flame)
    c.ellipse((0.41, 0.18, 0.59, 0.3), (250, 230, 90, 255))


def _pencil(c: _Canvas, rng: np.random.Generator) -> None:
    c.rect((0.12, 0.0, 0.88, 0.1), _pick(rng, [(240, 140, 150), (230, 120, 130)]))
    c.rect((0.1, 0.08, 0.9, 0.17), _pick(rng, METAL))
    body = _pick(rng, YELLOW + [(40, 110, 200), (220, 50, 50), (60, 160, 70)])
    c.rect((0.12, 0.16, 0.88, 0.76), body)
    c.rect((0.42, 0.16, 0.58, 0.76), _shade(rng, body, 0.8))
    c.poly([(0.12, 0.76), (0.88, 0.76), (0.5, 1.0)], _pick(rng, [(235, 200, 150), (225, 185, 130)]))
    c.poly([(0.36, 0.91), (0.64, 0.91), (0.5, 1.0)], (40, 40, 40, 255))


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
    "apple": (_apple, 1.0),
    "orange": (_orange, 1.0),
    "banana": (_banana, 1.8),
    "bottle": (_bottle, 0.4),
    "wine glass": (_wine_glass, 0.6),
    "fork": (_fork, 0.3),
    "knife": (_knife, 0.25),
    "spoon": (_spoon, 0.3),
    "book": (_book, 1.4),
    "lamp": (_lamp, 0.8),
    "chair": (_chair, 0.7),
    "bicycle": (_bicycle, 1.6),
    "bus": (_bus, 2.0),
    "train": (_train, 2.0),
    "airplane": (_airplane, 1.4),
    "pine tree": (_pine_tree, 0.75),
    "snowman": (_snowman, 0.65),
    "butterfly": (_butterfly, 1.3),
    "turtle": (_turtle, 1.5),
    "rainbow": (_rainbow, 1.9),
    "traffic light": (_traffic_light, 0.4),
    "television": (_television, 1.3),
    "candle": (_candle, 0.45),
    "pencil": (_pencil, 0.25),
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
