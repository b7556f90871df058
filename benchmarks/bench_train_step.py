"""One `sdm_csp` training step (from dense features) against the floor of its parts, measured in
the same run: text tower forward+backward over all C prompts, plus decoupler forward+backward.
Target ratio <= 1.2. Random weights (speed does not depend on them). Examples:

    python benchmarks/bench_train_step.py                                   # CPU, ViT-B-16 sizes
    python benchmarks/bench_train_step.py --device cuda --batch 32 --spec open_clip:RN101 --image-size 448
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved_medians

from clipml.backbones import Dense, load_backbone
from clipml.engine.train import build_optimizer, training_loss
from clipml.experiment import OptimConfig
from clipml.losses import build_loss
from clipml.model import ModelConfig, MultiLabelCLIP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="open_clip:ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    backbone = load_backbone(args.spec, args.image_size, args.device, allow_random=True)
    classnames = [f"class number {i}" for i in range(args.classes)]
    torch.manual_seed(0)
    model = MultiLabelCLIP(backbone, classnames, ModelConfig(method="sdm_csp"))
    optimizer = build_optimizer(OptimConfig(), model)
    loss_fn = build_loss("asl", reduction="sum")
    h, w = backbone.grid
    dense = Dense(torch.randn(args.batch, h * w, backbone.embed_dim, device=args.device),
                  torch.randn(args.batch, backbone.embed_dim, device=args.device), (h, w))
    labels = torch.randint(-1, 2, (args.batch, args.classes), dtype=torch.int8, device=args.device)

    def step():
        loss = training_loss(model, loss_fn, dense, labels, blending=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def text_part():
        model.prompts().sum().backward()

    guidance = model.guidance

    def decoupler_part():
        features, _ = model.decoupler(dense.tokens, guidance)
        features.sum().backward()

    medians = interleaved_medians({"step": step, "text": text_part, "decoupler": decoupler_part},
                                  args.repeats, args.device)
    step_t, text_t, decoupler_t = medians["step"], medians["text"], medians["decoupler"]
    floor = text_t + decoupler_t
    print(f"{args.spec} @ {args.image_size}, C={args.classes}, B={args.batch}, N={h * w}, device={args.device}")
    print(f"{'text fwd+bwd s':>15s} {'decoupler fwd+bwd s':>20s} {'floor s':>9s} {'step s':>9s} {'step/floor':>11s}")
    print(f"{text_t:15.4f} {decoupler_t:20.4f} {floor:9.4f} {step_t:9.4f} {step_t / floor:11.3f}")


if __name__ == "__main__":
    main()
