"""A synthetic multi-label world: drawn objects on cluttered backgrounds, rendered on demand.

It stands in for COCO/VOC where no real images can be downloaded: every scene is a pure
function of (preset, stream, seed, index), its labels are exactly what is visible, every
object's visible pixels are known (`Scene.owner`, `SyntheticSplit.instances`), and classes
co-occur through themes (a sea scene tends to hold a boat and a fish) so label-correlation
methods have structure to find.

Presets (`data.options.preset`), their statistics fixed from the real datasets before any
method ran on them (measured values: `tests/test_world.py` and `benchmarks/results/lab.md`):

- ``classic``: the first lab: 64 px, the 24 original classes, 1-4 objects at 30-60 % of the
  image side, captions naming every object. Kept for the tests and tiny runs.
- ``coco_like``: COCO 2014 train has 2.9 labels (categories) per image and 7.3 instances
  (Lin et al., "Microsoft COCO", ECCV 2014, §5: 3.5 categories and 7.7 instances per image
  on the 2014 release; DualCoOp/SARB report 2.9 labels per image on train2014), and 41 %
  of its instances are small (< 32² px, about 0.3 % of a 640x480 image), 34 % medium.
  Here: 96 px, 48 classes, 1-10 objects with repeated classes, object sides log-uniform
  over 14-70 % of the image, so that about half of the labelled objects cover under 5 %
  of the image; mean labels per image about 2.9.
- ``voc_like``: VOC 2007 trainval has 1.4-1.5 labels per image and 2.5 objects per image,
  mostly large (Everingham et al., IJCV 2010, table 1: 5,011 images, 12,608 objects).
  Here: 96 px, 48 classes, 1-4 objects at 30-85 % of the side, mean labels about 1.45.

Captions of ``coco_like``/``voc_like`` scenes are alt-text-like: they name each labelled class
with a probability that grows with its largest object's area (small objects often go unnamed,
as in real captions), use counts for repeated classes ("two birds") and sometimes a synonym.

Label rule: an object is labelled only if, after every later object has been drawn over it,
at least `min_visible_fraction` of its own pixels and at least `min_visible_area` of the
image stay visible, and its pixels differ from what lies beneath by at least `min_contrast`
(mean L1 over RGB). A placement that would break the rule for the new object or for any
earlier one is rejected and the object is placed again (new size and position); after
`placement_tries` rejections the object is left out of the scene, drawn nowhere and not
labelled.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import json
import logging
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from clipml.data.base import NEGATIVE, POSITIVE, MultiLabelSplit, ObjectInstance
from clipml.lab.shapes import SHAPE_NAMES, aspect, draw_object
from clipml.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DATASET = "synthetic"
"""The world's dataset name (data.dataset) and caption source name (data.captions.source)."""

SYNTHETIC_CLASSES: List[str] = list(SHAPE_NAMES[:24])
"""The 24 object classes of the classic world, in label order."""

LAB_CLASSES: List[str] = list(SHAPE_NAMES)
"""Every drawable class, in label order: the classes of the coco_like and voc_like worlds."""

THEMES: Dict[str, Tuple[str, ...]] = {
    "sky": ("sun", "moon", "star", "cloud", "kite", "balloon", "bird", "lightning"),
    "sea": ("boat", "fish", "bird", "cloud", "sun"),
    "town": ("house", "tree", "car", "cloud", "bird", "balloon"),
    "garden": ("flower", "tree", "mushroom", "umbrella", "ball", "bird", "heart"),
    "desert": ("cactus", "sun", "mountain", "tent", "bird"),
    "camping": ("tent", "tree", "mountain", "moon", "star"),
    "home": ("cup", "clock", "key", "heart", "ball", "umbrella", "balloon"),
}
"""Scene themes: a scene picks one, then draws most of its objects from it."""

LAB_THEMES: Dict[str, Tuple[str, ...]] = {
    "sky": ("sun", "moon", "star", "cloud", "kite", "balloon", "bird", "lightning", "airplane", "rainbow"),
    "sea": ("boat", "fish", "bird", "cloud", "sun", "turtle"),
    "street": ("house", "tree", "car", "bus", "bicycle", "traffic light", "bird", "balloon", "umbrella"),
    "garden": ("flower", "tree", "mushroom", "umbrella", "ball", "bird", "heart", "butterfly", "apple"),
    "desert": ("cactus", "sun", "mountain", "tent", "bird", "turtle"),
    "camping": ("tent", "tree", "pine tree", "mountain", "moon", "star", "bicycle"),
    "home": ("cup", "clock", "key", "heart", "ball", "lamp", "chair", "book", "television", "candle"),
    "kitchen": ("cup", "bottle", "wine glass", "fork", "knife", "spoon", "apple", "orange", "banana", "candle"),
    "winter": ("snowman", "pine tree", "star", "moon", "cloud", "house"),
    "travel": ("airplane", "train", "bus", "car", "mountain", "cloud", "rainbow"),
    "school": ("book", "pencil", "clock", "apple", "lamp", "chair", "key"),
}
"""Themes of the coco_like and voc_like worlds: every one of the 48 classes is in at least one."""

SYNONYMS: Dict[str, Tuple[str, ...]] = {
    "airplane": ("plane", "aeroplane"),
    "bicycle": ("bike",),
    "television": ("tv",),
    "car": ("automobile",),
    "boat": ("ship",),
    "cup": ("mug",),
    "house": ("home",),
    "ball": ("football",),
    "pine tree": ("fir tree",),
}
"""Other words captions may use for a class (TaI-DPT-style label derivation must map them back)."""

PLURALS: Dict[str, str] = {"bus": "buses", "knife": "knives", "wine glass": "wine glasses", "cactus": "cacti",
                           "fish": "fish", "butterfly": "butterflies", "mushroom": "mushrooms"}
"""Irregular plurals; every other name takes an "s"."""

COUNT_WORDS: Tuple[str, ...] = ("two", "three", "four", "five")

STREAMS: Dict[str, int] = {"pretrain": 0, "train": 1, "val": 2, "test": 3}
"""Disjoint random streams: scenes of different streams never coincide, whatever the seed."""

CAPTION_TEMPLATES: Tuple[str, ...] = (
    "a photo of {}.",
    "a picture of {}.",
    "an image of {}.",
    "a drawing of {}.",
    "a photo with {}.",
    "a scene with {}.",
    "{}.",
)

DEFAULT_SPLIT_SIZES: Dict[str, int] = {"train": 4000, "val": 1000, "test": 2000}


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Sizes are fractions of the image side unless named in pixels."""

    image_size: int = 64
    object_count_weights: Tuple[float, ...] = (0.25, 0.3, 0.25, 0.2)  # P(1 object), P(2), ...
    min_scale: float = 0.3  # geometric mean of an object's box sides, as a fraction of the image
    max_scale: float = 0.6
    scale_distribution: str = "uniform"  # or "log_uniform": as many objects per octave of size
    repeat_probability: float = 0.0  # an object after the first repeats a class already in the scene
    min_visible_fraction: float = 0.5
    min_visible_area: float = 0.01
    min_contrast: float = 60.0
    theme_probability: float = 0.85
    noise_std: float = 8.0  # upper end of the per-image Gaussian pixel noise
    clutter_lines: int = 6  # upper end of the number of random background lines
    placement_tries: int = 12
    caption_style: str = "all"  # "all": every labelled class named; "salient": alt-text-like (module doc)
    caption_area: float = 0.04  # "salient": a class is named with probability 1 - exp(-area / caption_area)
    synonym_probability: float = 0.0  # "salient": a named class uses one of its SYNONYMS

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ConfigError(f"synthetic image_size must be at least 16 pixels, got {self.image_size}")
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ConfigError(
                f"synthetic scales need 0 < min_scale <= max_scale <= 1, got {self.min_scale}, {self.max_scale}"
            )
        if not self.object_count_weights or min(self.object_count_weights) < 0 or sum(self.object_count_weights) <= 0:
            raise ConfigError(f"object_count_weights must be non-negative with a positive sum, got {self.object_count_weights}")
        if self.scale_distribution not in ("uniform", "log_uniform"):
            raise ConfigError(f"scale_distribution must be 'uniform' or 'log_uniform', got {self.scale_distribution!r}")
        if self.caption_style not in ("all", "salient"):
            raise ConfigError(f"caption_style must be 'all' or 'salient', got {self.caption_style!r}")


@dataclasses.dataclass(frozen=True)
class WorldPreset:
    """A named world: its classes, themes and scene settings (see the module docstring)."""

    classes: Tuple[str, ...]
    themes: Mapping[str, Tuple[str, ...]]
    scene: Mapping[str, object]


PRESETS: Dict[str, WorldPreset] = {
    "classic": WorldPreset(tuple(SYNTHETIC_CLASSES), THEMES, {}),
    "coco_like": WorldPreset(tuple(LAB_CLASSES), LAB_THEMES, dict(
        image_size=96,
        object_count_weights=(0.13, 0.14, 0.14, 0.12, 0.11, 0.1, 0.08, 0.07, 0.06, 0.05),
        min_scale=0.14, max_scale=0.7, scale_distribution="log_uniform", repeat_probability=0.45,
        min_visible_area=0.004, theme_probability=0.8,
        caption_style="salient", synonym_probability=0.25,
    )),
    "voc_like": WorldPreset(tuple(LAB_CLASSES), LAB_THEMES, dict(
        image_size=96,
        object_count_weights=(0.5, 0.3, 0.13, 0.07),
        min_scale=0.3, max_scale=0.85, scale_distribution="log_uniform", repeat_probability=0.4,
        min_visible_area=0.01, theme_probability=0.8,
        caption_style="salient", synonym_probability=0.25,
    )),
}
"""The worlds a dataset config can name with ``data.options.preset``."""


def world_preset(name: str) -> WorldPreset:
    if name not in PRESETS:
        raise ConfigError(f"unknown synthetic preset {name!r}; expected one of {sorted(PRESETS)} (data.options.preset)")
    return PRESETS[name]


@dataclasses.dataclass
class PlacedObject:
    """One drawn object: where it is, how it was drawn (seed, flip), and how much of it shows."""

    name: str
    left: int
    top: int
    width: int
    height: int
    seed: int
    flip: bool
    drawn_pixels: int
    visible_pixels: int


@dataclasses.dataclass
class Scene:
    """A rendered scene with its labels, caption and the record of what was drawn where."""

    image: Image.Image
    labels: np.ndarray  # int8 [C]: 1 visible, 0 absent
    caption: str
    theme: str
    objects: List[PlacedObject]
    owner: np.ndarray  # int16 [S, S]: index into `objects` of the visible object, -1 background
    classes: Sequence[str] = ()  # the world's class list (label order)

    def instances(self) -> List[ObjectInstance]:
        """Every labelled object with its visible pixels, in drawing order."""
        index = {name: i for i, name in enumerate(self.classes)}
        return [ObjectInstance(index[placed.name], self.owner == k) for k, placed in enumerate(self.objects)]


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _listed(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption_for(names: Sequence[str], template: str) -> str:
    """A caption listing `names` in the given order: "a photo of a boat, a fish and a cloud."."""
    return template.format(_listed([_article(name) for name in names]))


def plural(name: str) -> str:
    return PLURALS.get(name, name + "s")


def salient_caption(objects: Sequence[PlacedObject], image_area: int, cfg: SceneConfig,
                    rng: np.random.Generator) -> str:
    """An alt-text-like caption: each class named with probability 1 - exp(-area / caption_area)
    of its largest visible object (the largest class is always named), counts for repeated
    classes, sometimes a synonym; classes in random order."""
    largest: Dict[str, int] = {}
    counts: Dict[str, int] = {}
    for placed in objects:
        largest[placed.name] = max(largest.get(placed.name, 0), placed.visible_pixels)
        counts[placed.name] = counts.get(placed.name, 0) + 1
    names = list(largest)
    top = max(names, key=lambda name: largest[name])
    named = [name for name in names
             if name == top or rng.random() < 1.0 - math.exp(-largest[name] / image_area / cfg.caption_area)]
    phrases = []
    for k in rng.permutation(len(named)):
        name = named[int(k)]
        words = name
        if SYNONYMS.get(name) and rng.random() < cfg.synonym_probability:
            words = SYNONYMS[name][int(rng.integers(len(SYNONYMS[name])))]
        count = counts[name]
        amount = COUNT_WORDS[count - 2] if count - 2 < len(COUNT_WORDS) else "many"
        phrases.append(_article(words) if count == 1 else f"{amount} {plural(words)}")
    return CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))].format(_listed(phrases))


class SceneGenerator:
    """Renders scene `index` of a seeded stream of a preset world; any index renders independently.

    Options override the preset's SceneConfig fields (e.g. ``noise_std=0``).
    """

    def __init__(self, seed: int, image_size: Optional[int] = None, stream: Union[int, str] = 0,
                 preset: str = "classic", **options) -> None:
        if isinstance(stream, str):
            if stream not in STREAMS:
                raise ConfigError(f"unknown synthetic stream {stream!r}; expected one of {sorted(STREAMS)}")
            stream = STREAMS[stream]
        if seed < 0 or stream < 0:
            raise ConfigError(f"synthetic seed and stream must be non-negative, got seed={seed}, stream={stream}")
        world = world_preset(preset)
        self.preset = preset
        self.seed = int(seed)
        self.stream = int(stream)
        settings = {**world.scene, **options}
        if image_size is not None:
            settings["image_size"] = image_size
        self.config = SceneConfig(**settings)
        self.classes = list(world.classes)
        self.themes = world.themes
        self._class_index = {name: i for i, name in enumerate(self.classes)}
        self._themes = list(world.themes)
        counts = np.asarray(self.config.object_count_weights, dtype=np.float64)
        self._count_probs = counts / counts.sum()

    def render(self, index: int) -> Tuple[Image.Image, np.ndarray, str]:
        """(image, labels int8 [C], caption) of scene `index`."""
        scene = self.scene(index)
        return scene.image, scene.labels, scene.caption

    def scene(self, index: int) -> Scene:
        """The full record of scene `index` (see `Scene`)."""
        if index < 0:
            raise ConfigError(f"scene index must be non-negative, got {index}")
        rng = np.random.default_rng([self.stream, self.seed, int(index)])
        size = self.config.image_size
        canvas = self._background(rng)
        theme = self._themes[int(rng.integers(len(self._themes)))]
        names = self._pick_classes(rng, theme)
        owner = np.full((size, size), -1, dtype=np.int16)
        objects: List[PlacedObject] = []
        for name in names:
            self._place(rng, name, canvas, owner, objects)
        noise = rng.uniform(0.0, self.config.noise_std)
        if noise > 0:
            canvas = canvas.astype(np.float32) + rng.normal(0.0, noise, size=canvas.shape).astype(np.float32)
            canvas = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
        labels = np.full(len(self.classes), NEGATIVE, dtype=np.int8)
        for placed in objects:
            labels[self._class_index[placed.name]] = POSITIVE
        if self.config.caption_style == "salient":
            caption = salient_caption(objects, size * size, self.config, rng)
        else:
            order = rng.permutation(len(objects))
            template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
            caption = caption_for([objects[i].name for i in order], template)
        return Scene(Image.fromarray(canvas, "RGB"), labels, caption, theme, objects, owner, self.classes)

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """A muted two-colour gradient with random lines: uint8 [S, S, 3]."""
        size = self.config.image_size
        hue = rng.uniform()
        base = np.asarray(colorsys.hsv_to_rgb(hue, rng.uniform(0.05, 0.45), rng.uniform(0.2, 0.75))) * 255
        other = np.clip(base + rng.uniform(-45, 45, size=3), 0, 255)
        ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
        ramp = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
        weight = np.broadcast_to(ramp, (size, size))[..., None]
        pixels = (base * (1 - weight) + other * weight).astype(np.uint8)
        image = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(0, self.config.clutter_lines + 1))):
            points = [tuple(rng.uniform(-0.1, 1.1, size=2) * size) for _ in range(2)]
            shade = np.clip(base + rng.uniform(-70, 70, size=3), 0, 255).astype(int)
            draw.line(points, fill=tuple(int(v) for v in shade), width=int(rng.integers(1, 3)))
        return np.array(image)

    def _pick_classes(self, rng: np.random.Generator, theme: str) -> List[str]:
        """Object classes in drawing order; with `repeat_probability` a class can come again."""
        count = 1 + int(rng.choice(len(self._count_probs), p=self._count_probs))
        chosen: List[str] = []
        for _ in range(count):
            if chosen and self.config.repeat_probability > 0 and rng.random() < self.config.repeat_probability:
                chosen.append(chosen[int(rng.integers(len(chosen)))])
                continue
            pool = self.themes[theme] if rng.random() < self.config.theme_probability else self.classes
            pool = [name for name in pool if name not in chosen] or [n for n in self.classes if n not in chosen]
            chosen.append(pool[int(rng.integers(len(pool)))])
        return chosen

    def _scale(self, rng: np.random.Generator) -> float:
        cfg = self.config
        if cfg.scale_distribution == "log_uniform":
            return math.exp(rng.uniform(math.log(cfg.min_scale), math.log(cfg.max_scale)))
        return rng.uniform(cfg.min_scale, cfg.max_scale)

    def _place(
        self,
        rng: np.random.Generator,
        name: str,
        canvas: np.ndarray,
        owner: np.ndarray,
        objects: List[PlacedObject],
    ) -> None:
        """Draw `name` where it keeps every labelled object visible, or leave it out (see module doc)."""
        cfg = self.config
        size = cfg.image_size
        min_area = cfg.min_visible_area * size * size
        new_id = len(objects)
        for _ in range(cfg.placement_tries):
            scale = self._scale(rng) * size
            ratio = math.sqrt(aspect(name))
            width = int(min(size, max(4, round(scale * ratio))))
            height = int(min(size, max(4, round(scale / ratio))))
            left = int(rng.integers(0, size - width + 1))
            top = int(rng.integers(0, size - height + 1))
            seed = int(rng.integers(2**31))
            flip = bool(rng.random() < 0.5)
            rgba = draw_object(name, width, height, seed, flip)
            mask = rgba[..., 3] > 0
            drawn = int(mask.sum())
            if drawn < max(min_area, 1):
                continue
            region = canvas[top : top + height, left : left + width]
            contrast = np.abs(rgba[..., :3][mask].astype(np.int16) - region[mask].astype(np.int16)).sum(1).mean()
            if contrast < cfg.min_contrast:
                continue
            window = owner[top : top + height, left : left + width]
            covered = np.bincount(window[mask].astype(np.int64) + 1, minlength=new_id + 1)[1:]
            if any(
                placed.visible_pixels - covered[k] < max(min_area, cfg.min_visible_fraction * placed.drawn_pixels)
                for k, placed in enumerate(objects)
            ):
                continue
            for k, placed in enumerate(objects):
                placed.visible_pixels -= int(covered[k])
            window[mask] = new_id
            region[mask] = rgba[..., :3][mask]
            objects.append(PlacedObject(name, left, top, width, height, seed, flip, drawn, drawn))
            return
        logger.debug("left %s out of a scene: no valid placement in %d tries", name, cfg.placement_tries)


@dataclasses.dataclass
class SyntheticSplit(MultiLabelSplit):
    """A split of the synthetic world; images are rendered in memory from their item names.

    Items are "scene-<preset>-<size>px-<split>-<seed>-<index>", so the dataset identity
    (masks, feature caches) differs between worlds and sizes, and `subset` and reordering keep
    each item bound to its own scene.
    """

    seed: int = 0
    stream: int = STREAMS["train"]
    image_size: int = 64
    preset: str = "classic"
    # Scenes rendered while building the split (scene index -> uint8 pixels, and the owner map of
    # their objects' visible pixels with each object's class), shared by subsets, so that every
    # epoch does not render them again.
    rendered: Optional[Dict[int, np.ndarray]] = dataclasses.field(default=None, repr=False, compare=False)
    owners: Optional[Dict[int, Tuple[np.ndarray, Tuple[int, ...]]]] = dataclasses.field(
        default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._generator = SceneGenerator(self.seed, image_size=self.image_size, stream=self.stream,
                                         preset=self.preset)

    def scene_index(self, index: int) -> int:
        """The scene number that item `index` renders."""
        item = self.items[index]
        prefix, _, number = item.rpartition("-")
        if not prefix.startswith("scene-") or not number.isdigit():
            raise DataError(f"{self.dataset}/{self.split}: item {item!r} is not a synthetic scene name")
        return int(number)

    def scene(self, index: int) -> Scene:
        return self._generator.scene(self.scene_index(index))

    def open_image(self, index: int) -> Image.Image:
        pixels = (self.rendered or {}).get(self.scene_index(index))
        if pixels is not None:
            return Image.fromarray(pixels, "RGB")
        return self.scene(index).image

    def caption(self, index: int) -> str:
        return self.scene(index).caption

    @property
    def has_instances(self) -> bool:
        return True

    def instances(self, index: int) -> List[ObjectInstance]:
        """Every labelled object of image `index` with its visible pixels."""
        kept = (self.owners or {}).get(self.scene_index(index))
        if kept is None:
            return self.scene(index).instances()
        owner, classes = kept
        return [ObjectInstance(c, owner == k) for k, c in enumerate(classes)]


@functools.lru_cache(maxsize=8)
def _render(split: str, num_images: int, seed: int, image_size: Optional[int], preset: str):
    """Labels, pixels and owner maps of a stream's first scenes, kept for the process: every run
    of a sweep asks for the same splits, and rendering them costs seconds each time. Arrays are
    read-only."""
    generator = SceneGenerator(seed, image_size=image_size, stream=split, preset=preset)
    scenes = [generator.scene(i) for i in range(num_images)]
    labels = np.stack([scene.labels for scene in scenes])
    rendered = {i: np.asarray(scene.image) for i, scene in enumerate(scenes)}
    index = {name: c for c, name in enumerate(generator.classes)}
    owners = {i: (scene.owner, tuple(index[p.name] for p in scene.objects)) for i, scene in enumerate(scenes)}
    for array in (labels, *rendered.values(), *(owner for owner, _ in owners.values())):
        array.flags.writeable = False
    return generator, labels, rendered, owners


def synthetic_split(split: str = "train", num_images: int = 1000, seed: int = 0, image_size: Optional[int] = None,
                    preset: str = "classic") -> SyntheticSplit:
    """Scenes 0..num_images-1 of `split`'s stream of a preset world, with their complete labels.

    Splits draw from disjoint streams, so train, val and test never share a scene.
    """
    if split not in STREAMS or split == "pretrain":
        raise ConfigError(f"synthetic split must be 'train', 'val' or 'test', got {split!r}")
    if num_images < 1:
        raise ConfigError(f"synthetic {split}: num_images must be at least 1, got {num_images}")
    world_preset(preset)
    generator, labels, rendered, owners = _render(split, num_images, seed, image_size, preset)
    size = generator.config.image_size
    items = [f"scene-{preset}-{size}px-{split}-{seed}-{i:06d}" for i in range(num_images)]
    return SyntheticSplit(
        dataset=DATASET,
        split=split,
        classes=list(generator.classes),
        items=items,
        targets=labels,
        root=None,
        seed=seed,
        stream=STREAMS[split],
        image_size=size,
        preset=preset,
        rendered=rendered,
        owners=owners,
    )


def load_synthetic_split(
    root: Optional[Union[str, Path]],
    split: str,
    num_images: Optional[int] = None,
    seed: int = 0,
    image_size: Optional[int] = None,
    preset: str = "classic",
) -> MultiLabelSplit:
    """Dataset-registry entry point; `root` is unused (scenes are rendered in memory).

    `num_images` defaults to DEFAULT_SPLIT_SIZES[split]; `image_size` to the preset's.
    """
    if num_images is None:
        if split not in DEFAULT_SPLIT_SIZES:
            raise ConfigError(f"synthetic split must be one of {sorted(DEFAULT_SPLIT_SIZES)}, got {split!r}")
        num_images = DEFAULT_SPLIT_SIZES[split]
    return synthetic_split(split, num_images=num_images, seed=seed, image_size=image_size, preset=preset)


def write_synthetic_dataset(
    out_dir: Union[str, Path],
    num_images: Union[int, Mapping[str, int]] = 200,
    seed: int = 0,
    image_size: Optional[int] = None,
    quality: int = 95,
    preset: str = "classic",
) -> Path:
    """Write JPEG folders plus `<split>.jsonl` manifests and `classes.txt` under `out_dir`.

    `num_images` is one count for train/val/test or a {split: count} mapping. Each manifest
    line is {"image": "images/<split>/<index>.jpg", "positive": [...], "negative": [...]},
    paths relative to `out_dir`. Returns `out_dir`.
    """
    out = Path(out_dir)
    counts = dict(num_images) if isinstance(num_images, Mapping) else {s: int(num_images) for s in ("train", "val", "test")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(name + "\n" for name in world_preset(preset).classes))
    for split, count in counts.items():
        data = synthetic_split(split, num_images=count, seed=seed, image_size=image_size, preset=preset)
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        labels = data.labels  # dense once: each access builds it
        with open(out / f"{split}.jsonl", "w") as manifest:
            for i in range(len(data)):
                relative = f"images/{split}/{data.scene_index(i):06d}.jpg"
                data.open_image(i).save(out / relative, quality=quality)
                row = labels[i]
                record = {
                    "image": relative,
                    "positive": [c for c, v in zip(data.classes, row) if v == POSITIVE],
                    "negative": [c for c, v in zip(data.classes, row) if v == NEGATIVE],
                }
                manifest.write(json.dumps(record) + "\n")
        logger.info("wrote %d synthetic %s images to %s", count, split, folder)
    return out
