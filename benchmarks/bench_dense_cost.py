"""Cost of `encode_dense` relative to the library's own `encode_image`, per tower family, at the
real sizes with random weights (speed does not depend on them), timed interleaved on the same
images. Target: ratio <= 1.05. The families' rows go side by side in one run.

    python benchmarks/bench_dense_cost.py                                   # CPU, the default specs
    OMP_NUM_THREADS=1 python benchmarks/bench_dense_cost.py --clock cpu     # a shared CPU machine
    python benchmarks/bench_dense_cost.py --device cuda --precision bf16 --batch 32
    python benchmarks/bench_dense_cost.py --specs open_clip:ViT-SO400M-16-SigLIP2-384@384

A new family adds its spec (SPEC@IMAGE_SIZE) to SPECS. Hub tokenizers (SigLIP's) are not fetched:
only image encoders are timed, so a tower whose tokenizer is not cached gets CLIP's instead.
"""

from __future__ import annotations

import argparse
import time

import torch
from timing import interleaved_medians

import clipml.backbones.open_clip as open_clip_family
from clipml.backbones import BackboneConfig, load_backbone
from clipml.errors import BackboneError

SPECS = [
    "open_clip:ViT-B-16@224",  # reference: open_clip's own ViT (class token), dense='tokens'
    "open_clip:ViT-B-16-SigLIP2@224",  # timm ViT with a MAP head (SigLIP 2; SigLIP's image tower is the same)
    "open_clip:ViT-B-16-SigLIP2-384@384",
    "open_clip:PE-Core-B-16@224",  # timm Eva (rotary) with a MAP head
]


def tokenizer_or_clips(own):
    """The model's own tokenizer, else (offline, not cached) CLIP's: the text side is not timed."""
    from open_clip.tokenizer import SimpleTokenizer

    def load(name, context_length):
        try:
            return own(name, context_length)
        except BackboneError:
            return SimpleTokenizer(context_length=context_length)
    return load


def library_encode_image(backbone):
    if backbone.identity["library"] == "open_clip":
        return backbone.model.encode_image
    return lambda images: backbone.model.get_image_features(pixel_values=images).pooler_output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", nargs="+", default=SPECS, help="SPEC@IMAGE_SIZE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="cpu: this process's CPU seconds (CPU device, OMP_NUM_THREADS=1)")
    args = parser.parse_args()
    if args.clock == "cpu" and (args.device != "cpu" or torch.get_num_threads() != 1):
        parser.error("--clock cpu needs --device cpu and one torch thread (OMP_NUM_THREADS=1)")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    open_clip_family._own_tokenizer = tokenizer_or_clips(open_clip_family._own_tokenizer)

    print(f"device={args.device} precision={args.precision} batch={args.batch} repeats={args.repeats} "
          f"torch threads={torch.get_num_threads()} clock={args.clock}")
    print(f"| {'spec':36s} | {'size':>4s} | {'grid':>5s} | {'encode_image s':>14s} | {'encode_dense s':>14s} | ratio |")
    print(f"|{'-' * 38}|{'-' * 6}|{'-' * 7}|{'-' * 16}|{'-' * 16}|-------|")
    for entry in args.specs:
        spec, _, size = entry.rpartition("@")
        torch.manual_seed(0)
        backbone = load_backbone(BackboneConfig(spec, image_size=int(size), allow_random=True,
                                                precision=args.precision), args.device)
        images = torch.randn(args.batch, 3, backbone.image_size, backbone.image_size, device=backbone.device)
        library = library_encode_image(backbone)

        def image():
            with torch.no_grad(), backbone.autocast():
                return library(images)

        def dense():
            with torch.no_grad():
                return backbone.encode_dense(images)

        times = interleaved_medians({"image": image, "dense": dense}, args.repeats, args.device, clock=clock)
        grid = "x".join(map(str, backbone.grid))
        print(f"| {spec:36s} | {size:>4s} | {grid:>5s} | {times['image']:14.4f} | {times['dense']:14.4f} | "
              f"{times['dense'] / times['image']:5.3f} |", flush=True)


if __name__ == "__main__":
    main()
