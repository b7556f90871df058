"""Extra training cost of DSRB blending (issue 6) and conditional transport (issue 7) relative to
plain `sdm_csp`, measured in one run with the trainer's own step (`training_loss` + backward +
optimizer step) on the same batches, interleaved.

Per step: the median time of one step of each variant over the plain step. Per epoch: the steps
of one epoch plus, for prototype blending, the no-grad prototype pass over the training data
amortised over `prototype_every` epochs (`refresh_prototypes`, the trainer's own). Random weights;
speed does not depend on them. Examples:

    python benchmarks/bench_method_cost.py                                  # CPU, ViT-B-16 sizes
    python benchmarks/bench_method_cost.py --spec toy --image-size 64 --classes 24 --batch 64
    python benchmarks/bench_method_cost.py --device cuda --spec open_clip:RN101 --image-size 448 --batch 32
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved_medians

from clipml.backbones import BackboneConfig, Dense, load_backbone
from clipml.engine.train import build_optimizer, training_loss
from clipml.methods import Step
from clipml.methods.terms import refresh_prototypes
from clipml.experiment import OptimConfig
from clipml.losses import build_loss
from clipml.model import BlendingConfig, ModelConfig, MultiLabelCLIP, TransportConfig

VARIANTS = {
    "sdm_csp": {},
    "+ IPRB": {"blending": BlendingConfig(instance=True)},
    "+ PPRB": {"blending": BlendingConfig(prototype=True)},
    "+ DSRB (IPRB + PPRB)": {"blending": BlendingConfig(instance=True, prototype=True)},
    "+ CT": {"transport": TransportConfig(enabled=True)},
    "+ DSRB + CT": {"blending": BlendingConfig(instance=True, prototype=True),
                    "transport": TransportConfig(enabled=True)},
}


class FixedBatches:
    """The few random batches every variant trains on: a stand-in for a cached feature source."""

    def __init__(self, batches):
        self.data = batches

    def batches(self, seed=None, sharded=True):
        return iter(self.data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="open_clip:ViT-B-16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--n-ctx", type=int, default=16)
    parser.add_argument("--decoupler-dim", type=int, default=512)
    parser.add_argument("--steps-per-epoch", type=int, default=4, help="batches in the timed 'epoch'")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    backbone = load_backbone(BackboneConfig(args.spec, image_size=args.image_size, allow_random=True), args.device)
    classnames = [f"class number {i}" for i in range(args.classes)]
    h, w = backbone.grid
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.steps_per_epoch):
        tokens = torch.randn(args.batch, h * w, backbone.embed_dim, generator=generator)
        pooled = torch.randn(args.batch, backbone.embed_dim, generator=generator)
        labels = torch.randint(-1, 2, (args.batch, args.classes), dtype=torch.int8, generator=generator)
        batches.append((Dense(tokens.to(args.device), pooled.to(args.device), (h, w)), labels.to(args.device), None))
    source = FixedBatches(batches)
    loss_fn = build_loss("asl", reduction="mean")

    epochs, refreshes, every = {}, {}, {}
    for name, extra in VARIANTS.items():
        torch.manual_seed(0)
        config = ModelConfig.of(method="sdm_csp", n_ctx=args.n_ctx, decoupler_dim=args.decoupler_dim, **extra)
        model = MultiLabelCLIP(backbone, classnames, config)
        model.train()
        optimizer = build_optimizer(OptimConfig(name="adamw"), model)
        blending = config.blending.enabled
        if config.blending.prototype:
            refresh_prototypes(model, source, seed=0)  # blending needs prototypes before it steps
            refreshes[name] = lambda model=model: refresh_prototypes(model, source, seed=0)
            every[name] = config.blending.prototype_every

        def epoch(model=model, optimizer=optimizer, blending=blending):
            step_generator = torch.Generator().manual_seed(0)
            for dense, labels, _ in batches:
                # blending epochs (any epoch past start_epoch) or none
                step = Step(10**6 if blending else 0, generator=step_generator)
                loss = training_loss(model, loss_fn, dense, labels, step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

        epochs[name] = epoch

    medians = interleaved_medians({**{f"epoch {k}": v for k, v in epochs.items()},
                                   **{f"prototypes {k}": v for k, v in refreshes.items()}},
                                  args.repeats, args.device)
    plain = medians["epoch sdm_csp"]
    print(f"{args.spec} @ {args.image_size}, C={args.classes}, B={args.batch}, N={h * w}, "
          f"n_ctx={args.n_ctx}, decoupler_dim={args.decoupler_dim}, {args.steps_per_epoch} steps per epoch, "
          f"device={args.device}, torch threads={torch.get_num_threads()}, {args.repeats} interleaved rounds")
    print()
    print("| variant | s per step | step / plain | prototype pass s | epoch / plain (pass every R epochs) |")
    print("|---|---|---|---|---|")
    for name in VARIANTS:
        step = medians[f"epoch {name}"]
        refresh = medians.get(f"prototypes {name}", 0.0)
        per_epoch = step + refresh / every.get(name, 1)
        note = f" (R={every[name]})" if name in every else ""
        print(f"| {name} | {step / args.steps_per_epoch:.4f} | {step / plain:.2f} | "
              f"{refresh:.3f} | {per_epoch / plain:.2f}{note} |")


if __name__ == "__main__":
    main()
