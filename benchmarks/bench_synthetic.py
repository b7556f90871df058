"""Rendering speed of the synthetic world, side by side with decoding the same scenes as JPEG files.

Tells whether rendering in memory (SyntheticSplit) keeps up with reading a written copy
(write_synthetic_dataset + a manifest loader). Run: PYTHONPATH=. python benchmarks/bench_synthetic.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

from clipml.lab.world import SceneGenerator, write_synthetic_dataset


def scenes_per_second(image_size: int, count: int) -> float:
    generator = SceneGenerator(0, image_size=image_size, stream="test")
    start = time.perf_counter()
    for index in range(count):
        generator.render(index)
    return count / (time.perf_counter() - start)


def jpeg_decodes_per_second(image_size: int, count: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = write_synthetic_dataset(Path(tmp), {"test": count}, seed=0, image_size=image_size)
        files = sorted((out / "images" / "test").glob("*.jpg"))
        start = time.perf_counter()
        for path in files:
            with Image.open(path) as image:
                image.convert("RGB")
        return len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    for size in (64, 96, 224):
        render = scenes_per_second(size, args.count)
        decode = jpeg_decodes_per_second(size, args.count)
        print(f"{size:4d} px: render {render:7.0f} scenes/s, JPEG decode {decode:7.0f} images/s, "
              f"render/decode {render / decode:.2f}")


if __name__ == "__main__":
    main()
