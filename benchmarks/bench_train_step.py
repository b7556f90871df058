"""One training step (from dense features) of `sdm_csp` or `dualcoop` against the floor of its
parts, measured in the same run: the text tower forward+backward over all prompts (both prompt
sets for DualCoOp), plus the head forward+backward (decoupler and cosine head; DualCoOp's region
aggregation) on detached text features. Target ratio <= 1.2. Random weights (speed does not
depend on them). Examples:

    python benchmarks/bench_train_step.py                                   # CPU, ViT-B-16 sizes
    python benchmarks/bench_train_step.py --device cuda --batch 32 --spec open_clip:RN101 --image-size 448
    python benchmarks/bench_train_step.py --method dualcoop
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved_medians, peak_memory

from clipml.backbones import BackboneConfig, Dense, FrozenCLIP, load_backbone
from clipml.engine.train import build_optimizer, training_loss
from clipml.experiment import OptimConfig
from clipml.losses import build_loss
from clipml.model import ModelConfig, MultiLabelCLIP


def measure(backbone: FrozenCLIP, method: str, classes: int, batch: int, repeats: int) -> dict:
    """Seconds of a step and of its two parts (interleaved medians), and the peak device memory
    of a step (CUDA; None elsewhere)."""
    device = str(backbone.device)
    classnames = [f"class number {i}" for i in range(classes)]
    torch.manual_seed(0)
    model = MultiLabelCLIP(backbone, classnames, ModelConfig.of(method=method))
    optimizer = build_optimizer(OptimConfig(), model)
    loss_fn = build_loss("asl", reduction="sum")
    h, w = backbone.grid
    dense = Dense(torch.randn(batch, h * w, backbone.embed_dim, device=device),
                  torch.randn(batch, backbone.embed_dim, device=device), (h, w))
    labels = torch.randint(-1, 2, (batch, classes), dtype=torch.int8, device=device)

    def step():
        loss = training_loss(model, loss_fn, dense, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def text_part():
        text = model.prompts()
        sum(t.sum() for t in (text if isinstance(text, tuple) else (text,))).backward()

    with torch.no_grad():
        fixed = model.prompts()

    def head_part():
        leaves = tuple(t.detach().requires_grad_() for t in (fixed if isinstance(fixed, tuple) else (fixed,)))
        text = leaves if isinstance(fixed, tuple) else leaves[0]
        model.forward_dense(dense, text).logits.sum().backward()

    medians = interleaved_medians({"step": step, "text": text_part, "head": head_part}, repeats, device)
    return dict(medians, floor=medians["text"] + medians["head"], peak_step=peak_memory(step, device),
                tokens=h * w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="open_clip:ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--method", default="sdm_csp", choices=["sdm_csp", "dualcoop"])
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    backbone = load_backbone(BackboneConfig(args.spec, image_size=args.image_size, precision=args.precision,
                                            allow_random=True), args.device)
    result = measure(backbone, args.method, args.classes, args.batch, args.repeats)
    print(f"{args.spec} @ {args.image_size}, {args.method}, C={args.classes}, B={args.batch}, "
          f"N={result['tokens']}, device={args.device}, precision={args.precision}")
    print(f"{'text fwd+bwd s':>15s} {'head fwd+bwd s':>15s} {'floor s':>9s} {'step s':>9s} {'step/floor':>11s}")
    print(f"{result['text']:15.4f} {result['head']:15.4f} {result['floor']:9.4f} {result['step']:9.4f} "
          f"{result['step'] / result['floor']:11.3f}")


if __name__ == "__main__":
    main()
