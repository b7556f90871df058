"""Cost of `encode_dense` relative to the library's plain `encode_image` (target ratio <= 1.05).

Random weights (speed does not depend on them). Examples:
    python benchmarks/bench_backbone.py                                  # CPU, tiny + real archs
    python benchmarks/bench_backbone.py --device cuda --precision bf16 --batch 64
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved_medians, peak_memory

from clipml.backbones import BackboneConfig, FrozenCLIP, load_backbone

DEFAULT_MODELS = [
    "open_clip:clipml-tiny-vit@32",
    "open_clip:clipml-tiny-rn@128",
    "open_clip:RN101@448",
    "open_clip:ViT-B-16@224",
    "open_clip:ViT-B-16@448",
]


def measure(backbone: FrozenCLIP, batch: int, repeats: int) -> dict:
    """Seconds per call of the library's encode_image and of encode_dense (interleaved medians) on
    one batch of random images, and the peak device memory of each (CUDA; None elsewhere)."""
    device = str(backbone.device)
    images = torch.randn(batch, 3, backbone.image_size, backbone.image_size, device=device)
    model = backbone.model

    def plain():
        with torch.no_grad(), backbone.autocast():
            return model.encode_image(images)

    def dense():
        with torch.no_grad():
            return backbone.encode_dense(images)

    medians = interleaved_medians({"plain": plain, "dense": dense}, repeats, device)
    return dict(medians, peak_plain=peak_memory(plain, device), peak_dense=peak_memory(dense, device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="SPEC@IMAGE_SIZE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    print(f"device={args.device} precision={args.precision} batch={args.batch} repeats={args.repeats}")
    print(f"{'model':32s} {'size':>5s} {'encode_image s':>15s} {'encode_dense s':>15s} {'ratio':>7s} {'dense img/s':>12s}")
    for entry in args.models:
        spec, _, size = entry.rpartition("@")
        backbone = load_backbone(BackboneConfig(spec, image_size=int(size), precision=args.precision,
                                                allow_random=True), args.device)
        result = measure(backbone, args.batch, args.repeats)
        plain_t, dense_t = result["plain"], result["dense"]
        print(f"{spec:32s} {backbone.image_size:5d} {plain_t:15.4f} {dense_t:15.4f} "
              f"{dense_t / plain_t:7.3f} {args.batch / dense_t:12.1f}")


if __name__ == "__main__":
    main()
