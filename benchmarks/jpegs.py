"""A folder of photo-sized JPEGs for the decode and GPU benchmarks: synthetic-world scenes
rendered small, upscaled to COCO's usual 640 x 480 and given sensor-like noise, so each file
costs what a photo costs to decode (about 100 KB at quality 90, where a flat drawing would
compress to a few KB and decode several times faster)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from clipml.data import load_split
from clipml.data.base import MultiLabelSplit
from clipml.lab.world import write_synthetic_dataset


def write_photo_jpegs(folder: Path, count: int, width: int = 640, height: int = 480, noise: float = 10.0,
                      quality: int = 90, seed: int = 0, distinct: Optional[int] = None) -> MultiLabelSplit:
    """`count` JPEGs of width x height under `folder`, returned as a manifest split. With `distinct`,
    only that many scenes are rendered and the rest are hard links to them under other names (for
    long passes that cost little to write; each file is still read and decoded)."""
    distinct = min(count, distinct or count)
    write_synthetic_dataset(folder, {"test": distinct}, seed=seed, image_size=min(height, 240), quality=quality)
    split = load_split("manifest", folder, "test")
    rng = np.random.default_rng(seed)
    for index in range(len(split)):
        path = split.image_path(index)
        with Image.open(path) as small:
            pixels = np.asarray(small.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(pixels + rng.normal(0.0, noise, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=quality)
    if count == distinct:
        return split
    manifest = Path(folder) / "test.jsonl"
    lines = manifest.read_text().splitlines()
    for copy in range(distinct, count):
        record = json.loads(lines[copy % distinct])
        original = Path(folder) / record["image"]
        record["image"] = f"images/test/copy-{copy:06d}.jpg"
        os.link(original, Path(folder) / record["image"])
        lines.append(json.dumps(record))
    manifest.write_text("\n".join(lines) + "\n")
    return load_split("manifest", folder, "test")


def mean_file_kb(split: MultiLabelSplit) -> float:
    return float(np.mean([split.image_path(i).stat().st_size for i in range(len(split))]) / 1e3)
