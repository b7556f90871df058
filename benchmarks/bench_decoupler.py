"""Semantic decoupler forward + backward on CPU: classes in chunks of 16 (the earlier default)
against the size-based default (about 2^20 elements per chunk), measured side by side.

    OMP_NUM_THREADS=1 python benchmarks/bench_decoupler.py
"""

from __future__ import annotations

import argparse
import time

import torch

from clipml.decoupler import SemanticDecoupler

# (name, batch, locations, joint width, classes, decoupler width)
SHAPES = [
    ("lab toy ViT (8x8 map, d 64)", 64, 64, 64, 48, 64),
    ("lab toy RN (6x6 map, d 64)", 64, 36, 64, 48, 64),
    ("RN101 448 px (14x14, d 512), batch 8", 8, 196, 512, 80, 512),
]


def seconds(module: SemanticDecoupler, dense: torch.Tensor, guidance: torch.Tensor, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        features, attention = module(dense, guidance)
        (features.square().sum() + attention.sum()).backward()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); best of {args.repeats}\n")
    print("| shape | 16 classes (ms) | by size (ms) | chunk | speed-up |\n|---|---|---|---|---|")
    for name, batch, locations, width, classes, hidden in SHAPES:
        torch.manual_seed(0)
        dense, guidance = torch.randn(batch, locations, width, requires_grad=True), torch.randn(classes, width)
        fixed = SemanticDecoupler(width, width, hidden, class_chunk=16)
        sized = SemanticDecoupler(width, width, hidden)
        sized.load_state_dict(fixed.state_dict())
        old, new = seconds(fixed, dense, guidance, args.repeats), seconds(sized, dense, guidance, args.repeats)
        chunk = sized._chunk(torch.empty(batch, locations, hidden))
        print(f"| {name} | {1000 * old:.1f} | {1000 * new:.1f} | {chunk} | {old / new:.2f}x |")


if __name__ == "__main__":
    main()
