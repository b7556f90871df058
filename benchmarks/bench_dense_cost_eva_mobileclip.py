"""Cost of `encode_dense` ÷ the library's `encode_image` for EVA-02 and MobileCLIP 2 towers (timm
image towers under open_clip; target <= 1.05), random weights at the real sizes, timed
interleaved on the same images. ViT towers get a column per dense mode; FastViT towers have
one dense path ("tokens"), the other columns read "-".

    python benchmarks/bench_dense_cost_eva_mobileclip.py                       # CPU, the default towers
    OMP_NUM_THREADS=1 python benchmarks/bench_dense_cost_eva_mobileclip.py --clock cpu   # a shared CPU
    python benchmarks/bench_dense_cost_eva_mobileclip.py --device cuda --precision bf16 --batch 32
"""

from __future__ import annotations

import argparse
import time

import torch
from timing import interleaved_medians

from clipml.backbones import DENSE_MODES, BackboneConfig, load_backbone
from clipml.errors import BackboneError

DEFAULT_MODELS = ["open_clip:EVA02-B-16@224", "open_clip:MobileCLIP2-S0@256", "open_clip:MobileCLIP2-B@224"]


def towers(spec: str, size: int, args) -> dict:
    """The tower in every dense mode it accepts, each built from the same seed."""
    built = {}
    for mode in DENSE_MODES:
        torch.manual_seed(0)
        config = BackboneConfig(spec, image_size=size, precision=args.precision, allow_random=True, dense=mode)
        try:
            built[mode] = load_backbone(config, args.device)
        except BackboneError:  # FastViT: "tokens" only
            continue
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="SPEC@IMAGE_SIZE")
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

    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"device={args.device} ({name}) precision={args.precision} batch={args.batch} repeats={args.repeats} "
          f"torch threads={torch.get_num_threads()} clock={args.clock}")
    header = f"{'model':30s} {'size':>5s} {'grid':>7s} {'encode_image s':>15s} "
    print(header + " ".join(f"{m:>10s}" for m in DENSE_MODES))
    for entry in args.models:
        spec, _, size = entry.rpartition("@")
        built = towers(spec, int(size), args)
        first = built["tokens"]
        images = torch.randn(args.batch, 3, first.image_size, first.image_size, device=args.device)

        def plain():
            with torch.no_grad(), first.autocast():
                return first.model.encode_image(images)

        def dense(backbone):
            def run():
                with torch.no_grad():
                    return backbone.encode_dense(images)
            return run

        medians = interleaved_medians({"plain": plain, **{m: dense(b) for m, b in built.items()}},
                                      args.repeats, args.device, clock=clock)
        ratios = " ".join(f"{medians[m] / medians['plain']:10.3f}" if m in built else f"{'-':>10s}"
                          for m in DENSE_MODES)
        grid = "x".join(map(str, first.grid))
        print(f"{spec:30s} {first.image_size:5d} {grid:>7s} {medians['plain']:15.4f} {ratios}", flush=True)


if __name__ == "__main__":
    main()
