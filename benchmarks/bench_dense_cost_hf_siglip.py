"""Cost of `encode_dense` (the MAP head's value path per patch, clipml/backbones/hf_siglip.py)
relative to `encode_image` for transformers SigLIP towers at their real sizes, random weights
(speed does not depend on them), timed interleaved on the same images. Target: <= 1.05.

Towers, built locally from a config (no download):
- siglip:  SiglipModel with google/siglip2-base-patch16-224's vision sizes (width 768, 12 layers,
  12 heads, MLP 3072, 16-px patches, 224 px), the fixed-resolution SigLIP 2 / SigLIP B/16;
- siglip2: Siglip2Model (NaFlex) with the same widths and a 256-patch positional grid (256 px).
The text tower keeps the base widths with clipml's tiny tokenizer's vocabulary (the image path
never reads it). Columns: the library's own `get_image_features`, clipml's `encode_image` and
`encode_dense`, and the ratios. Examples:
    OMP_NUM_THREADS=1 python benchmarks/bench_dense_cost_hf_siglip.py --clock cpu    # a shared CPU machine
    python benchmarks/bench_dense_cost_hf_siglip.py --device cuda --batch 32 --sizes 224 448
"""

from __future__ import annotations

import argparse

import torch
from timing import add_clock_option, chosen_clock, interleaved_medians

from clipml.backbones import BackboneConfig
from clipml.backbones.hf_siglip import HFSiglipBackbone
from clipml.lab.tiny_siglip import tiny_image_processor, tiny_siglip_model, tiny_tokenizer

BASE = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
NATIVE = {"siglip": 224, "siglip2": 256}


def base_tower(model_type: str, image_size: int, device: str, precision: str) -> HFSiglipBackbone:
    native = NATIVE[model_type]
    tokenizer, processor = tiny_tokenizer(model_type), tiny_image_processor(model_type, native, 16)
    model = tiny_siglip_model(model_type, tokenizer, tower=BASE, image_size=native, patch_size=16)
    config = BackboneConfig(spec=f"hf:{model_type}-base", image_size=image_size, precision=precision)
    return HFSiglipBackbone(model, tokenizer, processor, config.spec, "random", config).to(device)


def library_encode_image(backbone: HFSiglipBackbone):
    """transformers' own global feature, as a user calls it (SigLIP 2: the processor's patch layout)."""
    model = backbone.model
    if not backbone.naflex:
        return lambda images: model.get_image_features(pixel_values=images, interpolate_pos_encoding=True).pooler_output
    from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

    def encode(images):
        patches = torch.stack([convert_image_to_patches(image, 16) for image in images])
        side = images.shape[-1] // 16
        return model.get_image_features(
            pixel_values=patches, pixel_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long, device=images.device),
            spatial_shapes=torch.tensor([[side, side]] * len(images), device=images.device)).pooler_output
    return encode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--towers", nargs="+", default=list(NATIVE), choices=list(NATIVE))
    parser.add_argument("--sizes", nargs="+", type=int, default=None, help="image sizes (default: each tower's own)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    add_clock_option(parser)
    args = parser.parse_args()
    clock = chosen_clock(parser, args)

    print(f"device={args.device} precision={args.precision} batch={args.batch} repeats={args.repeats} "
          f"torch threads={torch.get_num_threads()} clock={args.clock}")
    print(f"{'tower':8s} {'size':>5s} {'library s':>10s} {'encode_image s':>15s} {'encode_dense s':>15s} "
          f"{'dense/image':>12s} {'dense/library':>14s}")
    for model_type in args.towers:
        for size in args.sizes or [NATIVE[model_type]]:
            torch.manual_seed(0)
            backbone = base_tower(model_type, size, args.device, args.precision)
            images = torch.randn(args.batch, 3, size, size, device=args.device)
            library = library_encode_image(backbone)
            with torch.no_grad():
                times = interleaved_medians({
                    "library": lambda: library(images),
                    "image": lambda: backbone.encode_image(images),
                    "dense": lambda: backbone.encode_dense(images),
                }, args.repeats, args.device, clock=clock)
            print(f"{model_type:8s} {size:5d} {times['library']:10.4f} {times['image']:15.4f} {times['dense']:15.4f} "
                  f"{times['dense'] / times['image']:12.3f} {times['dense'] / times['library']:14.3f}", flush=True)


if __name__ == "__main__":
    main()
