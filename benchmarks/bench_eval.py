"""Images/s of `clipml.engine.evaluate.evaluate` (JPEG decode, transform, image tower, text
features, heads, metrics) against the bare image tower (`encode_dense` on ready tensors of the
same batch size), target ratio >= 0.9; also `evaluate` on pre-decoded tensors (the image pipeline
excluded), `evaluate` from a feature cache of the same images, the image pipeline alone
(DataLoader, no tower) and the text features that evaluate computes once per call, all measured
interleaved in one run. Splitting evaluate into that per-call text pass and a per-image rest
projects the ratio to real test-split sizes (a pass over the first quarter of the images
separates the per-image cost from the fixed cost per call). The images are synthetic scenes written as JPEG
files (COCO-like decode cost) and read through the manifest loader. Random weights. Examples:

    PYTHONPATH=. python benchmarks/bench_eval.py --images 32 --batch 16 --repeats 3
    PYTHONPATH=. python benchmarks/bench_eval.py --device cuda --images 2048 --batch 128 --workers 8
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from typing import Dict, Iterator

import torch
from timing import interleaved_medians, peak_memory

from clipml.backbones import BackboneConfig, FrozenCLIP, load_backbone
from clipml.data import load_split, readable_names
from clipml.data.base import MultiLabelSplit
from clipml.data.loader import make_loader
from clipml.lab.world import write_synthetic_dataset
from clipml.data.transforms import Normalize255, eval_transform
from clipml.engine.cache import build_feature_cache
from clipml.engine.evaluate import evaluate
from clipml.engine.features import Batch, CachedFeatureSource, ImageFeatureSource
from clipml.model import ModelConfig, MultiLabelCLIP


class PreDecodedSource:
    """ImageFeatureSource without the image pipeline: uint8 images decoded and transformed once,
    normalised and encoded per pass."""

    def __init__(self, split: MultiLabelSplit, backbone: FrozenCLIP, transform, batch_size: int) -> None:
        self.split, self.backbone, self.batch_size = split, backbone, batch_size
        self.images = torch.stack([transform(split.open_image(i)) for i in range(len(split))]).to(backbone.device)
        self.labels = torch.from_numpy(split.labels.copy()).to(backbone.device)
        self.normalize = Normalize255(backbone.mean, backbone.std).to(backbone.device)

    def batches(self, seed=None) -> Iterator[Batch]:
        for start in range(0, len(self.split), self.batch_size):
            index = torch.arange(start, min(len(self.split), start + self.batch_size))
            with torch.no_grad():
                dense = self.backbone.encode_dense(self.normalize(self.images[index]))
            yield dense, self.labels[index], index


def measure(split: MultiLabelSplit, backbone: FrozenCLIP, method: str, batch: int, workers: int,
            repeats: int) -> Dict[str, object]:
    """Seconds per pass of each row (interleaved medians); the per-image cost and the fixed cost
    per call of evaluate() from images and from the cache, from passes over all images and over
    their first quarter (fixed: the text pass, starting the loader workers, the metrics); the
    peak device memory of evaluate() and of the bare tower (CUDA; None elsewhere)."""
    device = str(backbone.device)
    model = MultiLabelCLIP(backbone, readable_names(split), ModelConfig.of(method=method))
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std, normalize=False)
    count, part = len(split), max(1, len(split) // 4)
    quarter = split.subset(range(part))
    full = ImageFeatureSource(split, backbone, transform, batch, workers)
    full_quarter = ImageFeatureSource(quarter, backbone, transform, batch, workers)
    decoded = PreDecodedSource(split, backbone, transform, batch)
    ready = [decoded.normalize(decoded.images[s:s + batch]) for s in range(0, len(split), batch)]

    def tower() -> None:
        with torch.no_grad():
            for images in ready:
                backbone.encode_dense(images)

    def pipeline() -> None:
        for _ in make_loader(split, transform, batch, shuffle=False, workers=workers,
                             pin_memory=device.startswith("cuda")):
            pass

    def text_once() -> None:
        with torch.no_grad():
            model.text_features()

    with tempfile.TemporaryDirectory() as folder:
        cache = build_feature_cache(split, backbone, folder, batch_size=batch, workers=workers)
        cached = CachedFeatureSource(split, cache, batch, backbone.device)
        cached_quarter = CachedFeatureSource(quarter, cache, batch, backbone.device)
        medians = interleaved_medians({
            "tower": tower,
            "text": text_once,
            "evaluate": lambda: evaluate(model, full),
            "evaluate_quarter": lambda: evaluate(model, full_quarter),
            "evaluate_decoded": lambda: evaluate(model, decoded),
            "evaluate_cached": lambda: evaluate(model, cached),
            "evaluate_cached_quarter": lambda: evaluate(model, cached_quarter),
            "pipeline": pipeline,
        }, repeats, device)
        cache.close()
    fits = {}
    for name in ("evaluate", "evaluate_cached"):
        per_image = max(medians[name] - medians[f"{name}_quarter"], 0.0) / max(count - part, 1)
        fits[name] = {"per_image": per_image, "fixed": max(medians[name] - count * per_image, 0.0)}
    return {"seconds": medians, "fits": fits, "images": count, "quarter": part, "classes": len(model.classnames),
            "peak_evaluate": peak_memory(lambda: evaluate(model, full), device),
            "peak_tower": peak_memory(tower, device)}


def report(result: Dict[str, object]) -> str:
    medians, count = result["seconds"], result["images"]
    rate = {name: count / seconds for name, seconds in medians.items() if name != "text"}
    rows = [
        ("bare image tower: encode_dense on ready tensors", "tower"),
        ("evaluate(): JPEG decode + transform + tower + text + heads + metrics", "evaluate"),
        ("evaluate() on pre-decoded uint8 tensors (image pipeline excluded)", "evaluate_decoded"),
        ("evaluate() from the feature cache (fp16 features read from disk, no tower)", "evaluate_cached"),
        ("image pipeline alone: DataLoader decode + transform, no tower", "pipeline"),
    ]
    lines = ["| what | s per pass | images/s | / bare tower |", "|---|---|---|---|"]
    for label, key in rows:
        lines.append(f"| {label} | {medians[key]:.2f} | {rate[key]:.2f} | {rate[key] / rate['tower']:.3f} |")
    lines.append(f"\nevaluate / tower: {rate['evaluate'] / rate['tower']:.3f} (target >= 0.9); "
                 f"pre-decoded: {rate['evaluate_decoded'] / rate['tower']:.3f}")
    # evaluate = a fixed cost per call + a per-image part (from the passes over all images and over
    # their first quarter); project the ratio to real test splits.
    tower_per_image = medians["tower"] / count
    lines.append(f"text features, once per evaluate(): {medians['text']:.3f} s")
    for name in ("evaluate", "evaluate_cached"):
        fit = result["fits"][name]
        ratio = f"{tower_per_image / fit['per_image']:.3f}" if fit["per_image"] > 0 else "n/a (timing noise)"
        lines.append(f"{name}: {fit['per_image'] * 1e3:.3f} ms per image (tower {tower_per_image * 1e3:.3f} ms, ratio "
                     f"{ratio}), {fit['fixed']:.3f} s fixed per call (passes over {count} and {result['quarter']} images)")
    fit = result["fits"]["evaluate"]
    for name, images in (("VOC 2007 test", 4952), ("COCO 2014 val", 40504)):
        ratio = images * tower_per_image / max(images * fit["per_image"] + fit["fixed"], 1e-12)
        lines.append(f"projected evaluate / tower on {name} ({images} images): {ratio:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="open_clip:ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--method", default="sdm_csp")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--jpeg-size", type=int, default=480, help="side of the JPEG files")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # random-weight notices

    torch.manual_seed(0)
    backbone = load_backbone(BackboneConfig(args.spec, image_size=args.image_size, allow_random=True), args.device)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_dataset(tmp, {"test": args.images}, image_size=args.jpeg_size, quality=90)
        result = measure(load_split("manifest", tmp, "test"), backbone, args.method, args.batch, args.workers,
                         args.repeats)
    print(f"{args.spec} @ {backbone.image_size}px random weights, {args.method}, C={result['classes']}, "
          f"{args.images} JPEGs of {args.jpeg_size}px, batch {args.batch}, workers {args.workers}, "
          f"device={args.device}, threads={torch.get_num_threads()}, repeats={args.repeats} (interleaved medians)\n")
    print(report(result))


if __name__ == "__main__":
    main()
