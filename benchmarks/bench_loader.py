"""Input pipeline throughput: DataLoader (2 workers, decode + resize to 448) vs a bare
single-process PIL decode loop over the same 300 JPEGs of 500 x 375. Target ratio >= 0.8.

Two loader modes: normalise in the workers (float32 batches) and `normalize=False` (uint8
batches, normalised on the accelerator by `Normalize255`; not counted here). Each loader
pass includes starting its workers; "steady" leaves out the time to the first batch.
"""

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipml.data import MultiLabelSplit, eval_transform, make_loader

NUM, SIZE, WORKERS, REPEATS = 300, 448, 2, 3
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def make_images(folder: Path) -> list:
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[0:375, 0:500]
    items = []
    for i in range(NUM):
        base = np.stack([(xx + 3 * i) % 256, (yy + 5 * i) % 256, (xx + yy + i) % 256], axis=-1)
        pixels = np.clip(base + rng.randint(-20, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)
        items.append(f"{i:04d}.jpg")
    return items


def bare_decode(folder: Path, items: list) -> float:
    start = time.perf_counter()
    for item in items:
        with Image.open(folder / item) as image:
            image.convert("RGB")
    return NUM / (time.perf_counter() - start)


def loader_throughput(split: MultiLabelSplit, normalize: bool):
    transform = eval_transform(SIZE, CLIP_MEAN, CLIP_STD, normalize=normalize)
    loader = make_loader(split, transform, batch_size=32, workers=WORKERS)
    start = time.perf_counter()
    first, count = None, 0
    for images, labels, index in loader:
        first = first or time.perf_counter()
        count += len(index)
    end = time.perf_counter()
    assert count == NUM and images.shape[1:] == (3, SIZE, SIZE)
    return NUM / (end - start), (NUM - 32) / (end - first)


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        items = make_images(folder)
        split = MultiLabelSplit("bench", "test", ["a"], items, np.zeros((NUM, 1)), folder)
        bare_decode(folder, items)  # warm the page cache
        bare = max(bare_decode(folder, items) for _ in range(REPEATS))
        print(f"bare PIL decode loop (1 process): {bare:7.1f} images/s")
        for normalize, what in ((True, "float32, normalised in workers"), (False, "uint8, normalise on device")):
            runs = [loader_throughput(split, normalize) for _ in range(REPEATS)]
            total, steady = max(r[0] for r in runs), max(r[1] for r in runs)
            print(
                f"DataLoader {WORKERS} workers, decode + resize {SIZE}, {what}: {total:6.1f} images/s "
                f"(steady {steady:6.1f}); ratio to bare decode {total / bare:.2f} (steady {steady / bare:.2f})"
            )


if __name__ == "__main__":
    main()
