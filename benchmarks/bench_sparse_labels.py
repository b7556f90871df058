"""Labels of an Open-Images-like split held dense ([N, C] int8) against sparse (clipml.data.sparse):
peak memory (tracemalloc) and time to build from triples, mask at p = 0.5 and evaluate.

The split has `--images` images x 9,605 classes and `--labels` known labels per image (40 %
positive). Evaluation scores it batch by batch with random logits: dense keeps the [N, C] logits
and labels and calls `evaluate_scores`; sparse keeps the logits at the known entries
(`KnownScoresBuilder`) and calls `evaluate_known`. The last lines project the sparse labels of a
full Open Images V6 train split from the measured bytes per label and per image. Example:
    python benchmarks/bench_sparse_labels.py --images 5000
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from clipml.data.base import MultiLabelSplit
from clipml.data.partial import partial_split, simulate_known
from clipml.data.sparse import SparseLabels
from clipml.known_scores import KnownScoresBuilder
from clipml.metrics import evaluate_known, evaluate_scores, sigmoid

CLASSES = 9_605
BATCH = 128


def triples(images: int, per_image: int, seed: int = 0):
    rng = np.random.RandomState(seed)
    rows = np.repeat(np.arange(images), per_image)
    band = CLASSES // per_image  # one class from each band: distinct within an image
    cols = rng.randint(0, band, size=rows.size) + np.tile(np.arange(per_image) * band, images)
    return rows, cols, (rng.rand(rows.size) < 0.4).astype(np.int8)


def batch_logits(labels: np.ndarray, start: int) -> np.ndarray:
    logits = np.random.default_rng(start).standard_normal(labels.shape, dtype=np.float32)
    logits[labels == 1] += 2
    return logits


def dense_pipeline(images: int, rows, cols, values):
    def build():
        labels = np.full((images, CLASSES), -1, dtype=np.int8)
        labels[rows, cols] = values
        return labels

    def mask(labels):
        return np.where(simulate_known(labels, 0.5, 0) & (labels != -1), labels, -1).astype(np.int8)

    def evaluate(labels):
        logits = np.zeros(labels.shape, dtype=np.float32)
        for start in range(0, images, BATCH):
            logits[start:start + BATCH] = batch_logits(labels[start:start + BATCH], start)
        return evaluate_scores(sigmoid(logits), labels, scores=logits)["mAP"]

    return build, mask, evaluate


def sparse_pipeline(images: int, rows, cols, values):
    classes = [f"c{j}" for j in range(CLASSES)]
    items = [f"{i}.jpg" for i in range(images)]

    def build():
        return MultiLabelSplit("bench", "test", classes, items, SparseLabels.from_triples(rows, cols, values,
                                                                                         (images, CLASSES)))

    def mask(split):
        return partial_split(split, 0.5, seed=0)

    def evaluate(split):
        builder = KnownScoresBuilder(CLASSES, k=3)
        for start in range(0, images, BATCH):
            index = np.arange(start, min(start + BATCH, images))
            batch = split.targets.dense(index)  # what the training loop and evaluation receive
            builder.add(index, batch_logits(batch, start), batch)
        return evaluate_known(builder.finish(images))["mAP"]

    return build, mask, evaluate


def measure(step, *args):
    """(result, seconds, peak MB above what was held before)."""
    tracemalloc.start()
    started = time.perf_counter()
    result = step(*args)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    return result, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5_000, help="images in the split (default 5,000)")
    parser.add_argument("--labels", type=int, default=10, help="known labels per image (default 10)")
    parser.add_argument("--project-images", type=int, default=9_000_000,
                        help="images of the projected split (default 9M, Open Images V6 train)")
    parser.add_argument("--project-labels", type=float, default=19e6,
                        help="known labels of the projected split (default 19M, the V6 train human label rows)")
    args = parser.parse_args()
    rows, cols, values = triples(args.images, args.labels)
    print(f"{args.images:,} images x {CLASSES:,} classes, {rows.size:,} known labels "
          f"(N x C = {args.images * CLASSES / 1e6:,.0f} MB as int8)")
    print(f"{'stage':<10} {'dense MB':>9} {'sparse MB':>10} {'ratio':>7} {'dense s':>8} {'sparse s':>9} {'ratio':>7}")
    results = {}
    for name, pipeline in (("dense", dense_pipeline), ("sparse", sparse_pipeline)):
        build, mask, evaluate = pipeline(args.images, rows, cols, values)
        labels, *build_cost = measure(build)
        masked, *mask_cost = measure(mask, labels)
        value, *eval_cost = measure(evaluate, labels)
        held = labels.nbytes if name == "dense" else labels.targets.nbytes
        results[name] = {"build": build_cost, "mask": mask_cost, "evaluate": eval_cost, "held": held, "mAP": value}
        del labels, masked
    for stage in ("build", "mask", "evaluate"):
        (dense_s, dense_mb), (sparse_s, sparse_mb) = results["dense"][stage], results["sparse"][stage]
        print(f"{stage:<10} {dense_mb:>9.1f} {sparse_mb:>10.1f} {dense_mb / sparse_mb:>6.0f}x "
              f"{dense_s:>8.2f} {sparse_s:>9.2f} {dense_s / sparse_s:>6.1f}x")
    dense_held, sparse_held = results["dense"]["held"], results["sparse"]["held"]
    print(f"labels held: dense {dense_held / 1e6:,.1f} MB, sparse {sparse_held / 1e6:,.1f} MB "
          f"({dense_held / sparse_held:,.0f}x); mAP dense {results['dense']['mAP']:.6f}, "
          f"sparse {results['sparse']['mAP']:.6f}")
    per_label, per_image = 5, 8  # class id int32 + value int8; one int64 row pointer per image
    projected = args.project_labels * per_label + args.project_images * per_image
    print(f"projected: {args.project_images:,} images x {CLASSES:,} classes with {args.project_labels:,.0f} known "
          f"labels: sparse {projected / 1e9:.2f} GB ({per_label} B per label + {per_image} B per image), dense "
          f"{args.project_images * CLASSES / 1e9:,.0f} GB")


if __name__ == "__main__":
    main()
