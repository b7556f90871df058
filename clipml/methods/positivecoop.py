"""PositiveCoOp (Rawlekar et al., WACV 2025): a learned positive prompt per class through the text
encoder, and in place of DualCoOp's negative prompt a learned negative embedding per class directly
in the joint space (no text-encoder pass for negatives); scored with DualCoOp's region aggregation,
S+ − S− with the attention of the positive side."""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import torch
from torch import nn

from clipml.config import require
from clipml.methods.base import Method, Output, cosine_head
from clipml.methods.dualcoop import aggregate, check_mean_token
from clipml.methods.registry import register_method
from clipml.prompts import ContextPrompts


@dataclasses.dataclass
class PositiveCoOpConfig:
    """PositiveCoOp's prompts and negative embeddings; defaults follow its code."""

    class_specific: bool = True  # own positive context per class (the reference's --csc); false: one shared
    negative_std: float = 1.0  # the negative embeddings start from N(0, std²) per entry (the code: randn)
    # Also learn a per-class offset added to the positive text feature (N(0, negative_std²) at the
    # start), as the reference code does; false: the positive prompt alone, as the paper describes it.
    positive_offset: bool = False
    # Aggregate over the attention pool's mean token too (ResNet backbones), as model.dualcoop.mean_token.
    mean_token: bool = False

    def __post_init__(self) -> None:
        require(self.negative_std > 0, "model.positivecoop.negative_std", self.negative_std, "> 0")


class PositiveNegativePrompts(nn.Module):
    """A learned positive context per class (through the text encoder) and a learned negative
    embedding per class in the joint space, [C, D]; optionally a learned positive offset [C, D]."""

    def __init__(self, backbone, classnames, n_ctx: int, init, std: float, own: PositiveCoOpConfig) -> None:
        super().__init__()
        self.classnames = list(classnames)
        self.positive = ContextPrompts(backbone, classnames, n_ctx, own.class_specific, init, std)
        shape = (len(self.classnames), backbone.embed_dim)
        self.negative = nn.Parameter(torch.randn(shape, device=backbone.device) * own.negative_std)
        self.offset = nn.Parameter(torch.randn(shape, device=backbone.device) * own.negative_std) \
            if own.positive_offset else None

    def forward(self, classes: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        rows = slice(None) if classes is None else classes
        positive = self.positive(classes)
        if self.offset is not None:
            positive = positive + self.offset[rows].to(positive.dtype)
        return positive, self.negative[rows].to(positive.dtype)


@register_method("positivecoop")
class PositiveCoOp(Method):
    options = PositiveCoOpConfig
    spatial = True
    class_subsets = True

    def build(self, model) -> None:
        cfg, own = model.config, model.config.method_options
        model.prompts = PositiveNegativePrompts(model.backbone, model.classnames, cfg.n_ctx, cfg.ctx_init,
                                                cfg.ctx_std, own)
        model.head = cosine_head(model, bias="none")  # S+ − S−: the negative embedding sets the offset
        check_mean_token(model, "positivecoop")

    def score(self, model, dense, text, classes=None) -> Output:
        positive, negative = text
        return aggregate(model, dense, positive, negative, model.config.method_options.mean_token)

    def class_rows(self, model) -> List[str]:
        return [name for name in ("prompts.negative", "prompts.offset") if hasattr(model.prompts, name.split(".")[1])
                and getattr(model.prompts, name.split(".")[1]) is not None]
