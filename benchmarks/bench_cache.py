"""Feature cache: (a) wall time of a whole training run from the cache (one-time extraction
included) vs re-encoding every image in every epoch; (b) peak resident memory while reading a
COCO-sized cache (82,783 images x 197 tokens x 512, fp16: 16.7 GB on disk).

(a) runs `train()` on the synthetic world with the tiny random ViT at 64 px (and, with --vitb,
open_clip ViT-B-16 with random weights at 224 px, slow on a CPU). (b) builds the big cache through
`build_feature_cache` with a stand-in image tower that returns random features (the point is the
I/O, not the encoder), then measures peak RSS (`ru_maxrss`) in fresh processes: one training
epoch through CachedFeatureSource, and, for comparison, fancy indexing of an `np.load(mmap_mode="r")`
memory map over part of the file. Free disk is checked first; with too little room the image
count shrinks (same per-image size) and the table says so.

    PYTHONPATH=. python benchmarks/bench_cache.py [--epochs 5] [--images 200] [--vitb] [--big 82783]
"""

import argparse
import json
import logging
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clipml.backbones import Dense, FrozenCLIP
from clipml.config import load_config
from clipml.data.base import MultiLabelSplit
from clipml.engine.cache import build_feature_cache
from clipml.engine.features import CachedFeatureSource
from clipml.experiment import ExperimentConfig

TOKENS, DIM = 197, 512


# (a) Training time -------------------------------------------------------------------------------
def run_training(folder: Path, name: str, spec: str, size: int, images: int, epochs: int, *extra: str) -> float:
    from clipml.engine.train import train

    cfg = load_config(ExperimentConfig, None, [
        f"name={name}", f"backbone.spec={spec}", f"backbone.image_size={size}", "backbone.allow_random=true",
        f"data.options={{num_images: {images}}}", f"data.mask_dir={folder / f'masks-{images}'}", "data.workers=0",
        "data.batch_size=16", "data.eval_batch_size=32", "data.val_fraction=0.2", "data.known_ratio=0.5",
        "model.n_ctx=4", "model.sdm_csp.decoupler_dim=64", "optim.name=adamw", "optim.lr=0.01", f"optim.epochs={epochs}",
        "loss.reduction=mean", f"output_dir={folder / 'runs' / '{name}'}", f"data.cache_dir={folder / 'cache'}",
        *extra,
    ])
    start = time.perf_counter()
    summary = train(cfg, resume=False)
    seconds = time.perf_counter() - start
    print(f"  {name}: {seconds:.1f} s, val mAP {summary['val']['mAP']:.2f}", flush=True)
    return seconds


def training_rows(spec: str, size: int, images: int, epochs: int):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run_training(folder, "warmup", spec, size, 16, 1)  # imports, text encoders, allocator
        encode = run_training(folder, "re-encode", spec, size, images, epochs)
        rows = [("re-encode every epoch (resized_crop)", encode, 1.0)]
        for views in (1, 4):
            cached = run_training(folder, f"cache-v{views}", spec, size, images, epochs, "data.cache=true",
                                  f"data.cache_views={views}")
            rows.append((f"cache, {views} view(s), extraction included", cached, encode / cached))
        again = run_training(folder, "cache-v1-reused", spec, size, images, epochs, "data.cache=true")
        rows.append(("cache, 1 view, already built", again, encode / again))
    return rows


# (b) Peak memory ---------------------------------------------------------------------------------
class RandomTower(FrozenCLIP):
    """Stand-in image tower: ViT-B/16-shaped random features, no compute."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        self.image_size, self.embed_dim = 16, DIM
        self._identity = {"library": "bench", "model": "random-tower", "weights": "none"}
        self.block = torch.randn(64, TOKENS, DIM, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    def encode_dense(self, images: torch.Tensor) -> Dense:
        self.calls += 1
        tokens = self.block[:len(images)] + self.calls % 7  # fresh bytes per batch, at little cost
        return Dense(tokens=tokens, pooled=tokens[:, 0], grid=(1, TOKENS))


class BlankImages(MultiLabelSplit):
    def open_image(self, index: int):
        from PIL import Image

        return Image.new("RGB", (16, 16), (index % 256, 0, 0))


def big_split(count: int) -> MultiLabelSplit:
    classes = [f"class{i}" for i in range(80)]
    return BlankImages("bench", "train", classes, [f"{i:06d}.jpg" for i in range(count)],
                       np.zeros((count, 80), dtype=np.int8))


def child(mode: str, cache_dir: str, count: int, limit: int) -> None:
    """Runs in a fresh process: one pass, then prints peak RSS and bytes read as JSON."""
    torch.set_num_threads(1)
    base = peak_rss_mb()
    split = big_split(count)
    start = time.perf_counter()
    read = 0
    if mode == "build":
        cache = build_feature_cache(split, RandomTower(), cache_dir, batch_size=64, workers=2)
        read = cache.nbytes()
    elif mode == "reader":
        cache = build_feature_cache(split, RandomTower(), cache_dir)  # opens it (sizes, sampled CRCs)
        source = CachedFeatureSource(split, cache, 32, torch.device("cpu"), shuffle=True, random_views=True)
        for dense, labels, index in source.batches(seed=0):
            read += dense.tokens.numel() * 2
            if read >= limit:
                break
    else:
        (path,) = [p for p in Path(cache_dir).iterdir() if p.is_dir()]
        tokens = np.load(path / "tokens.npy", mmap_mode="r")
        order = np.random.RandomState(0).permutation(count)
        for start_row in range(0, count, 32):
            batch = torch.from_numpy(tokens[0, np.sort(order[start_row:start_row + 32])]).float()
            read += batch.numel() * 2
            if read >= limit:
                break
    print(json.dumps({"base_mb": base, "peak_mb": peak_rss_mb(), "ru_maxrss_mb": ru_maxrss_mb(),
                      "read_gb": read / 1e9, "seconds": time.perf_counter() - start}))


def ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux carries ru_maxrss over an exec from the forking parent, so
    the exact figure is VmHWM (the high-water mark of this image); elsewhere ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return ru_maxrss_mb()


def run_child(mode: str, cache_dir: Path, count: int, limit: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(cache_dir), str(count), str(limit)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_rows(count: int, where: str):
    per_image = (TOKENS + 1) * DIM * 2
    free = shutil.disk_usage(where).free
    if count * per_image > free - (8 << 30):  # keep 8 GB for everyone else
        smaller = int((free - (8 << 30)) // per_image)
        print(f"  only {free / 1e9:.1f} GB free on {where}: {smaller} images instead of {count}")
        count = smaller
    size_gb = count * per_image / 1e9
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        print(f"  building a {size_gb:.1f} GB cache of {count} images ...", flush=True)
        build = run_child("build", Path(tmp), count, 0)
        epoch = run_child("reader", Path(tmp), count, 1 << 62)
        part = 2 * 10 ** 9
        reader_part = run_child("reader", Path(tmp), count, part)
        memmap_part = run_child("memmap", Path(tmp), count, part)
    return count, size_gb, [
        ("build (extraction, write, fsync)", build),
        ("CachedFeatureSource, one full epoch", epoch),
        ("CachedFeatureSource, first 2 GB of an epoch", reader_part),
        ("np.load(mmap_mode='r') fancy indexing, 2 GB", memmap_part),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--images", type=int, default=200, help="synthetic training images for (a)")
    parser.add_argument("--vitb", action="store_true", help="also time open_clip ViT-B-16 at 224 px")
    parser.add_argument("--vitb-images", type=int, default=120)
    parser.add_argument("--big", type=int, default=82783, help="images in the large cache of (b)")
    parser.add_argument("--where", default=tempfile.gettempdir(), help="folder for the large cache")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, cache_dir, count, limit = args.child
        return child(mode, cache_dir, int(count), int(limit))
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)

    models = [("open_clip:clipml-tiny-vit", 64, args.images)]
    if args.vitb:
        models.append(("open_clip:ViT-B-16", 224, args.vitb_images))
    for spec, size, images in models:
        print(f"(a) {spec} at {size} px, {images} synthetic images, {args.epochs} epochs", flush=True)
        rows = training_rows(spec, size, images, args.epochs)
        print(f"\n| {spec} @ {size}px, {args.epochs} epochs | wall s | speed-up vs re-encode |\n|---|---|---|")
        for label, seconds, ratio in rows:
            print(f"| {label} | {seconds:.1f} | {ratio:.2f}x |")
        print()

    if not args.skip_memory:
        print(f"(b) peak RSS with a cache of {args.big} images x {TOKENS} x {DIM} fp16", flush=True)
        count, size_gb, rows = memory_rows(args.big, args.where)
        print(f"\n| {count} images, {size_gb:.1f} GB on disk | peak RSS MB (VmHWM) | ru_maxrss MB | "
              f"RSS after imports MB | GB read | s | GB/s |\n|---|---|---|---|---|---|---|")
        for label, r in rows:
            print(f"| {label} | {r['peak_mb']:.0f} | {r['ru_maxrss_mb']:.0f} | {r['base_mb']:.0f} | "
                  f"{r['read_gb']:.1f} | {r['seconds']:.0f} | {r['read_gb'] / max(r['seconds'], 1e-9):.2f} |")


if __name__ == "__main__":
    main()
