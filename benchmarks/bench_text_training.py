"""Cost of TaI-DPT's text-as-image training (issue 17): captions per second of one training step
(the frozen text tower encodes the batch's captions, then `training_loss` + backward + AdamW step,
as the trainer runs it), next to its parts and to an image training step, in one run, interleaved.

Rows: caption encoding alone (`encode_text_dense`, no grad); the full TaI-DPT step; DualCoOp's
step on a batch of cached image features (no image tower: what a cached sweep pays); the frozen
image tower on the same number of images (what an uncached image step pays on top). Captions are
the synthetic world's pretrain captions (`--preset`). Examples:

    python benchmarks/bench_text_training.py                                  # the toy CLIP, toy world
    python benchmarks/bench_text_training.py --device cuda --spec open_clip:RN50 --image-size 224 --classes 80
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved_medians

from clipml.backbones import BackboneConfig, Dense, load_backbone
from clipml.lab.captions import synthetic_captions
from clipml.engine.train import build_optimizer, training_loss
from clipml.experiment import OptimConfig
from clipml.losses import build_loss
from clipml.model import ModelConfig, MultiLabelCLIP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="toy")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--preset", default="coco_like", help="the synthetic world whose captions are trained on")
    parser.add_argument("--classes", type=int, default=48)
    parser.add_argument("--batch", type=int, default=256, help="captions (and images) per step")
    parser.add_argument("--n-ctx", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    backbone = load_backbone(BackboneConfig(args.spec, image_size=args.image_size, allow_random=args.spec != "toy"),
                             args.device)
    captions, _, world = synthetic_captions(args.batch, preset=args.preset)
    classnames = (world + [f"class number {i}" for i in range(args.classes)])[: args.classes]
    labels = torch.randint(0, 2, (args.batch, args.classes), dtype=torch.int8,
                           generator=torch.Generator().manual_seed(0)).to(args.device)

    def step_fn(method, loss, batch):
        torch.manual_seed(0)
        model = MultiLabelCLIP(backbone, classnames, ModelConfig.of(method=method, n_ctx=args.n_ctx))
        model.train()
        optimizer = build_optimizer(OptimConfig(name="adamw", lr=1e-3), model)
        loss_fn = build_loss(loss, reduction="mean")

        def step():
            dense = batch()
            value = training_loss(model, loss_fn, dense, labels)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
        return step

    def encode_captions():
        with torch.no_grad():
            return backbone.encode_text_dense(captions)

    h, w = backbone.grid
    generator = torch.Generator().manual_seed(0)
    cached = Dense(torch.randn(args.batch, h * w, backbone.embed_dim, generator=generator).to(args.device),
                   torch.randn(args.batch, backbone.embed_dim, generator=generator).to(args.device), (h, w))
    images = torch.randn(args.batch, 3, backbone.image_size, backbone.image_size, generator=generator).to(args.device)

    def image_tower():
        with torch.no_grad():
            return backbone.encode_dense(images)

    rows = {
        "caption encoding (text tower, no grad)": encode_captions,
        "TaI-DPT step (encode + loss + backward + step)": step_fn("taidpt", "ranking", encode_captions),
        "DualCoOp step on cached image features": step_fn("dualcoop", "asl", lambda: cached),
        "image tower on as many images (no grad)": image_tower,
    }
    seconds = interleaved_medians(rows, args.repeats, args.device)
    reference = seconds["TaI-DPT step (encode + loss + backward + step)"]
    length = encode_captions().tokens.shape[1]
    print(f"{backbone.identity['model']} @ {backbone.image_size}, {args.preset} captions, C={args.classes}, batch {args.batch} "
          f"(captions of up to {length} tokens), n_ctx={args.n_ctx}, device={args.device}, "
          f"torch threads={torch.get_num_threads()}, {args.repeats} interleaved rounds\n")
    print("| step | s per batch | items/s | time / TaI-DPT step |")
    print("|---|---|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {value:.4f} | {args.batch / value:.0f} | {value / reference:.2f} |")


if __name__ == "__main__":
    main()
