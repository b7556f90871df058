"""Text tower forward+backward of the prompt learners with prompts cut after the longest end
token (what `ContextPrompts` does) against the same prompts padded to the full context length
(77), measured side by side; the features of both are checked to be identical (the causal mask
makes the end-token feature independent of later positions). Random weights. Examples:

    PYTHONPATH=. python benchmarks/bench_text_truncation.py --repeats 5
    PYTHONPATH=. python benchmarks/bench_text_truncation.py --spec open_clip:RN101 --device cuda
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict, List, Tuple

import torch
from timing import interleaved_medians

from clipml.backbones import BackboneConfig, FrozenCLIP, load_backbone
from clipml.data.vocab import vocabulary
from clipml.prompts import ContextPrompts


def full_length(prompts: ContextPrompts) -> Tuple[torch.Tensor, torch.Tensor]:
    """(suffix, ids) of the prompts padded to the context length, as CoOp's original code keeps them."""
    backbone = prompts.backbone
    placeholder = " ".join(["X"] * prompts.n_ctx)
    ids = backbone.tokenize([f"{placeholder} {name}." for name in prompts.classnames]).to(backbone.device)
    with torch.no_grad():
        embedding = backbone.token_embedding(ids)
    return embedding[:, 1 + prompts.n_ctx:].clone(), ids


def encoders(learners: List[ContextPrompts]) -> Tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    """(truncated, full) functions returning the text features of every learner, concatenated."""
    padded = [full_length(p) for p in learners]

    def truncated() -> torch.Tensor:
        return torch.cat([p() for p in learners])

    def full() -> torch.Tensor:
        features = []
        for p, (suffix, ids) in zip(learners, padded):
            embeddings = torch.cat([p.prefix, p.context().to(p.prefix.dtype), suffix], dim=1)
            features.append(p.backbone.encode_embeddings(embeddings, ids))
        return torch.cat(features)

    return truncated, full


def learners_for(backbone: FrozenCLIP, classnames: List[str], n_ctx: int) -> Dict[str, List[ContextPrompts]]:
    torch.manual_seed(0)
    return {
        "csc": [ContextPrompts(backbone, classnames, n_ctx, class_specific=True)],
        "shared": [ContextPrompts(backbone, classnames, n_ctx, class_specific=False)],
        "dual": [ContextPrompts(backbone, classnames, n_ctx, True),
                 ContextPrompts(backbone, classnames, n_ctx, True)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="open_clip:ViT-B-16")
    parser.add_argument("--vocabulary", default="coco2014", help="class names (80 for COCO)")
    parser.add_argument("--n-ctx", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--learners", nargs="+", choices=["csc", "shared", "dual"], default=["csc", "shared", "dual"])
    args = parser.parse_args()

    backbone = load_backbone(BackboneConfig(args.spec, allow_random=True), args.device)
    classnames = [readable for _, readable in vocabulary(args.vocabulary)]
    print(f"{args.spec} text tower, random weights, C={len(classnames)} ({args.vocabulary}), n_ctx={args.n_ctx}, "
          f"device={args.device}, threads={torch.get_num_threads()}, repeats={args.repeats} (interleaved medians)")
    print("\n| learner | tokens (truncated / full) | max abs diff of features | truncated fwd+bwd s | "
          "full fwd+bwd s | speed-up |\n|---|---|---|---|---|---|")
    labels = {"csc": "CSC (class-specific)", "shared": "shared (CoOp)", "dual": "dual (DualCoOp +/-)"}
    built = learners_for(backbone, classnames, args.n_ctx)
    for key in args.learners:
        label, learners = labels[key], built[key]
        truncated, full = encoders(learners)
        with torch.no_grad():
            diff = float((truncated() - full()).abs().max())
        assert diff < 1e-4, f"{label}: truncated and full-length features differ by {diff}"
        parameters = [p.ctx for p in learners]

        def step(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
            def run() -> None:
                fn().sum().backward()
                for parameter in parameters:
                    parameter.grad = None
            return run

        medians = interleaved_medians({"truncated": step(truncated), "full": step(full)}, args.repeats, args.device)
        length = learners[0].ids.shape[1]
        print(f"| {label} | {length} / {backbone.context_length} | {diff:.2e} | {medians['truncated']:.3f} | "
              f"{medians['full']:.3f} | {medians['full'] / medians['truncated']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
