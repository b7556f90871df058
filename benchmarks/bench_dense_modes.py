"""Cost of `encode_dense` in each ViT dense mode relative to the library's plain `encode_image`
(target ratio <= 1.05), timed interleaved on the same images.

Specs without weights run with random ones (speed does not depend on them); every mode of one
model is built from the same seed. Examples:
    python benchmarks/bench_dense_modes.py                                   # CPU, tiny + ViT-B-16
    OMP_NUM_THREADS=1 python benchmarks/bench_dense_modes.py --clock cpu      # a shared CPU machine
    python benchmarks/bench_dense_modes.py --models open_clip:clipml-lab-vit@96 hf:clipml-tiny-hf@32
    python benchmarks/bench_dense_modes.py --device cuda --precision bf16 --batch 32 \\
        --models open_clip:ViT-B-16@224 open_clip:ViT-B-16@448
    python benchmarks/bench_dense_modes.py --models toy-vit@96 --lab coco_like    # + the lab's numbers

With `--lab PRESET` each mode also gets the lab's numbers on that world (clipml.lab.toyeval:
zero-shot mAP of the global feature and of the dense map, pointing game, attention mass
inside, linear probe), meaningful for the trained toys (`toy-vit`), not for random weights.
"""

from __future__ import annotations

import argparse

import torch
from timing import add_clock_option, chosen_clock, interleaved_medians

from clipml.backbones import DENSE_MODES, BackboneConfig, load_backbone

DEFAULT_MODELS = ["open_clip:clipml-tiny-vit@32", "open_clip:ViT-B-16@224"]
LAB_KEYS = ("zero_shot_global_map", "zero_shot_dense_map", "pointing_game", "mass_inside", "linear_probe_map")


def library_encode_image(backbone):
    """The library's own global image feature, as a user of open_clip or transformers calls it."""
    if backbone.identity["library"] == "open_clip":
        return backbone.model.encode_image
    return lambda images: backbone.model.get_image_features(pixel_values=images).pooler_output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="SPEC@IMAGE_SIZE (ViT towers)")
    parser.add_argument("--modes", nargs="+", default=list(DENSE_MODES), choices=DENSE_MODES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    add_clock_option(parser)
    parser.add_argument("--lab", metavar="PRESET", help="also the lab's numbers per mode on this world (coco_like, ...)")
    parser.add_argument("--lab-images", nargs=3, type=int, default=[4000, 1000, 2000], metavar=("TRAIN", "VAL", "TEST"),
                        help="images of the lab's splits (default: those of the toys' build records)")
    args = parser.parse_args()
    clock = chosen_clock(parser, args)

    print(f"device={args.device} precision={args.precision} batch={args.batch} repeats={args.repeats} "
          f"torch threads={torch.get_num_threads()} clock={args.clock}")
    print(f"{'model':30s} {'size':>5s} {'encode_image s':>15s} " + " ".join(f"{m:>10s}" for m in args.modes))
    for entry in args.models:
        spec, _, size = entry.rpartition("@")
        backbones = {mode: load_backbone(BackboneConfig(spec, image_size=int(size), precision=args.precision,
                                                        allow_random=True, dense=mode), args.device) for mode in args.modes}
        first = backbones[args.modes[0]]
        images = torch.randn(args.batch, 3, first.image_size, first.image_size, device=args.device)
        encode_image = library_encode_image(first)

        def plain():
            with torch.no_grad(), first.autocast():
                return encode_image(images)

        def dense(backbone):
            def run():
                with torch.no_grad():
                    return backbone.encode_dense(images)
            return run

        fns = {"plain": plain, **{mode: dense(backbone) for mode, backbone in backbones.items()}}
        medians = interleaved_medians(fns, args.repeats, args.device, clock=clock)
        ratios = " ".join(f"{medians[mode] / medians['plain']:10.3f}" for mode in args.modes)
        print(f"{spec:30s} {first.image_size:5d} {medians['plain']:15.4f} {ratios}")
        if args.lab:
            from clipml.lab.toyeval import evaluate_on_preset

            for mode, backbone in backbones.items():
                lab = evaluate_on_preset(backbone, args.lab, *args.lab_images)
                print(f"  {args.lab} {mode:10s} " + " ".join(f"{key} {lab[key]:.4f}" for key in LAB_KEYS))


if __name__ == "__main__":
    main()
