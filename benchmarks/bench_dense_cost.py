"""Cost of `encode_dense` relative to the library's own `encode_image`, per open_clip tower family,
at the real sizes with random weights (speed does not depend on them), timed interleaved on the
same images, in every dense mode the tower accepts (`backbone.dense`; MAP-head and FastViT towers
have "tokens" only: '-' in the other columns). Target: ratio <= 1.05. transformers' SigLIP towers
have their own script (bench_dense_cost_hf_siglip.py: they are built from local configs).

    python benchmarks/bench_dense_cost.py                                   # CPU, the default specs
    OMP_NUM_THREADS=1 python benchmarks/bench_dense_cost.py --clock cpu     # a shared CPU machine
    python benchmarks/bench_dense_cost.py --device cuda --precision bf16 --batch 32
    python benchmarks/bench_dense_cost.py --specs open_clip:ViT-SO400M-16-SigLIP2-384@384

A new family adds its spec (SPEC@IMAGE_SIZE) to SPECS. Hub tokenizers (SigLIP's) are not fetched:
only image encoders are timed, so a tower whose tokenizer is not cached gets CLIP's instead.
"""

from __future__ import annotations

import argparse

import torch
from timing import add_clock_option, chosen_clock, interleaved_medians

import clipml.backbones.open_clip as open_clip_family
from clipml.backbones import DENSE_MODES, BackboneConfig, load_backbone
from clipml.errors import BackboneError

SPECS = [
    "open_clip:ViT-B-16@224",  # reference: open_clip's own ViT (class token)
    "open_clip:ViT-B-16-SigLIP2@224",  # timm ViT with a MAP head (SigLIP 2; SigLIP's image tower is the same)
    "open_clip:ViT-B-16-SigLIP2-384@384",
    "open_clip:PE-Core-B-16@224",  # timm Eva (rotary) with a MAP head
    "open_clip:EVA02-B-16@224",  # timm Eva (rotary), class token
    "open_clip:MobileCLIP2-B@224",  # timm ViT with a conv stem, class token
    "open_clip:MobileCLIP2-S0@256",  # timm FastViT, average pool
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


def towers(spec: str, size: int, args) -> dict:
    """The tower in every dense mode it accepts, each built from the same seed."""
    built = {}
    for mode in DENSE_MODES:
        torch.manual_seed(0)
        config = BackboneConfig(spec, image_size=size, precision=args.precision, allow_random=True, dense=mode)
        try:
            built[mode] = load_backbone(config, args.device)
        except BackboneError:  # a mode this tower has no dense map in
            continue
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", nargs="+", default=SPECS, help="SPEC@IMAGE_SIZE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    add_clock_option(parser)
    args = parser.parse_args()
    clock = chosen_clock(parser, args)
    open_clip_family._own_tokenizer = tokenizer_or_clips(open_clip_family._own_tokenizer)

    print(f"device={args.device} precision={args.precision} batch={args.batch} repeats={args.repeats} "
          f"torch threads={torch.get_num_threads()} clock={args.clock}")
    print(f"| {'spec':36s} | {'size':>4s} | {'grid':>5s} | {'encode_image s':>14s} | "
          + " | ".join(f"{mode:>9s}" for mode in DENSE_MODES) + " |")
    print(f"|{'-' * 38}|{'-' * 6}|{'-' * 7}|{'-' * 16}|" + "|".join("-" * 11 for _ in DENSE_MODES) + "|")
    for entry in args.specs:
        spec, _, size = entry.rpartition("@")
        built = towers(spec, int(size), args)
        first = built["tokens"]
        images = torch.randn(args.batch, 3, first.image_size, first.image_size, device=args.device)

        def image():
            with torch.no_grad(), first.autocast():
                return first.model.encode_image(images)

        def dense(backbone):
            def run():
                with torch.no_grad():
                    return backbone.encode_dense(images)
            return run

        times = interleaved_medians({"image": image, **{mode: dense(b) for mode, b in built.items()}},
                                    args.repeats, args.device, clock=clock)
        ratios = " | ".join(f"{times[mode] / times['image']:9.3f}" if mode in built else f"{'-':>9s}"
                            for mode in DENSE_MODES)
        grid = "x".join(map(str, first.grid))
        print(f"| {spec:36s} | {size:>4s} | {grid:>5s} | {times['image']:14.4f} | {ratios} |", flush=True)


if __name__ == "__main__":
    main()
