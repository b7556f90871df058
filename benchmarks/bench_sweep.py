"""Wall time of a sweep over p = 0.1 ... 0.9 (one method) with the feature cache, against one pass
of the image tower over the same images (target ratio <= 2) and against the pipeline that
re-encodes every image in every epoch (data.cache=false; the speed-up). Test mAP of both
pipelines is printed side by side for the proportions run both ways (augment=none, so the two
see the same pixels and should agree up to the cache's fp16 rounding).

The re-encode pipeline is slow on a CPU: it runs on the first `--encode-proportions` of the
proportions and its sweep time is extrapolated linearly (its runs cost the same whatever p).
Random weights (speed does not depend on them); everything runs in one process, in this order:
tower pass, cached sweep, re-encode runs. Example (23 minutes on 2 busy shared CPU cores):

    PYTHONPATH=. python benchmarks/bench_sweep.py --images 96 --epochs 2 --encode-proportions 2
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List

import torch

import clipml.engine.builders as builders
import clipml.engine.train as train_module
import clipml.sweep as sweep_module
from clipml.backbones import BackboneConfig, load_backbone
from clipml.data import load_split
from clipml.data.transforms import eval_transform
from clipml.engine.features import ImageFeatureSource
from clipml.metrics import PROPORTIONS
from clipml.sweep import SweepSpec, run_sweep

METHOD = """\
name: bench
device: cpu
backbone: {{spec: "{spec}", image_size: {size}, allow_random: true}}
data:
  dataset: synthetic
  options: {{num_images: {images}, image_size: {size}}}
  augment: none
  val_fraction: 0.2
  batch_size: 32
  eval_batch_size: 64
  workers: 0
model: {{method: sdm_csp, n_ctx: 4, decoupler_dim: 64}}
loss: {{name: asl, reduction: mean}}
optim: {{name: adamw, lr: 0.01, epochs: {epochs}, warmup_epochs: 0.5}}
"""


class Stopwatch:
    """Seconds spent inside wrapped library functions (the benchmark patches names, not code)."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    def wrap(self, module, name: str, label: str) -> None:
        original = getattr(module, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start

        setattr(module, name, timed)


@contextmanager
def elapsed(out: Dict[str, float], key: str):
    start = time.perf_counter()
    yield
    out[key] = time.perf_counter() - start


def tower_pass(spec: str, size: int, images: int, batch: int) -> Dict[str, float]:
    """One pass of the image tower over the train and test images (decode, transform, encode_dense)."""
    torch.manual_seed(0)
    backbone = load_backbone(BackboneConfig(spec, image_size=size, allow_random=True))
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std, normalize=False)
    count, start = 0, time.perf_counter()
    for split in ("train", "test"):
        source = ImageFeatureSource(load_split("synthetic", None, split, num_images=images, image_size=size),
                                    backbone, transform, batch, workers=0)
        for dense, _, _ in source.batches():
            count += len(dense.tokens)
    return {"seconds": time.perf_counter() - start, "images": count}


def sweep(folder: Path, proportions: List[float], cache: bool, watch: Stopwatch) -> Dict[str, object]:
    overrides = [f"data.cache={str(cache).lower()}", f"data.cache_dir={folder / 'cache'}",
                 f"data.mask_dir={folder / 'masks'}"]
    spec = SweepSpec(configs=[str(folder / "sdm_csp.yaml")], proportions=proportions,
                     output_dir=str(folder / ("cached" if cache else "re-encode")), overrides=overrides)
    watch.seconds.clear()
    start = time.perf_counter()
    result = run_sweep(spec)
    seconds = time.perf_counter() - start
    runs = {f"{r['p']:g}": r["test_mAP"] for r in result.table["runs"]}
    return {"seconds": seconds, "runs": len(runs), "test_mAP": runs, "parts": dict(watch.seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="open_clip:ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=96, help="synthetic images per split (train and test)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--encode-proportions", type=int, default=2,
                        help="proportions run through the re-encode pipeline (then extrapolated to 9)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # random-weight notices

    watch = Stopwatch()
    watch.wrap(train_module, "build_backbone", "backbone loads")
    watch.wrap(builders, "build_feature_cache", "feature cache build/open")
    watch.wrap(train_module, "evaluate", "evaluations (zero-shot, val, test)")
    watch.wrap(train_module, "build_splits", "splits (render images, masks)")
    watch.wrap(sweep_module, "write_tables", "sweep tables and plot")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "sdm_csp.yaml").write_text(METHOD.format(spec=args.spec, size=args.image_size,
                                                           images=args.images, epochs=args.epochs))
        print(f"{args.spec} @ {args.image_size}px random weights, synthetic {args.images} train + "
              f"{args.images} test images, sdm_csp n_ctx=4 decoupler_dim=64, {args.epochs} epochs, "
              f"augment=none, workers=0, torch threads={torch.get_num_threads()}", flush=True)
        tower = tower_pass(args.spec, args.image_size, args.images, 64)
        print(f"tower pass: {tower['images']} images in {tower['seconds']:.1f} s", flush=True)
        cached = sweep(folder, list(PROPORTIONS), True, watch)
        print(f"cached sweep: {cached['runs']} runs in {cached['seconds']:.1f} s", flush=True)
        encode_ps = list(PROPORTIONS[:args.encode_proportions])
        encode = sweep(folder, encode_ps, False, watch)
        print(f"re-encode: {encode['runs']} runs in {encode['seconds']:.1f} s", flush=True)

    per_run = encode["seconds"] / encode["runs"]
    encode_sweep = per_run * len(PROPORTIONS)
    rows = [
        ("one image-tower pass over train+test (decode, transform, encode_dense)", tower["seconds"], "1.00"),
        (f"cached sweep, {cached['runs']} proportions (extraction included)", cached["seconds"],
         f"{cached['seconds'] / tower['seconds']:.2f}"),
        (f"re-encode every epoch, {encode['runs']} proportions (measured)", encode["seconds"],
         f"{encode['seconds'] / tower['seconds']:.2f}"),
        (f"re-encode every epoch, {len(PROPORTIONS)} proportions (extrapolated: {per_run:.1f} s/run x "
         f"{len(PROPORTIONS)})", encode_sweep, f"{encode_sweep / tower['seconds']:.2f}"),
    ]
    print("\n| pipeline | wall s | / tower pass |\n|---|---|---|")
    for label, seconds, ratio in rows:
        print(f"| {label} | {seconds:.1f} | {ratio} |")
    print(f"\ncached sweep / tower pass: {cached['seconds'] / tower['seconds']:.2f} (target <= 2)")
    print(f"speed-up of the cache over re-encoding, 9-proportion sweep: {encode_sweep / cached['seconds']:.2f}x "
          f"(per run: {per_run:.1f} s vs {cached['seconds'] / cached['runs']:.1f} s)")

    print("\n| where the time went | cached sweep s | re-encode s (measured runs) |\n|---|---|---|")
    for label in sorted(set(cached["parts"]) | set(encode["parts"])):
        print(f"| {label} | {cached['parts'].get(label, 0.0):.1f} | {encode['parts'].get(label, 0.0):.1f} |")
    for name, result in (("cached", cached), ("re-encode", encode)):
        rest = result["seconds"] - sum(result["parts"].values())
        print(f"| rest ({name}: training epochs, model and text setup) | "
              + (f"{rest:.1f} | |" if name == "cached" else f"| {rest:.1f} |"))

    print("\n| p | test mAP, cache | test mAP, re-encode | difference |\n|---|---|---|---|")
    for p, value in cached["test_mAP"].items():
        other = encode["test_mAP"].get(p)
        both = f"{other:.3f} | {value - other:+.3f}" if other is not None else "not run | "
        print(f"| {p} | {value:.3f} | {both} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "tower": tower, "cached": cached,
                                               "encode": encode, "encode_extrapolated_s": encode_sweep}, indent=2))


if __name__ == "__main__":
    main()
