"""DualCoOp (METHODS §4): a positive and a negative learned prompt per class, scored by
class-specific region aggregation, S+ − S−."""

from __future__ import annotations

import dataclasses
from typing import Optional

from clipml.decoupler import dualcoop_aggregate
from clipml.config import require
from clipml.errors import ConfigError
from clipml.methods.base import Method, Output, cosine_head
from clipml.methods.registry import register_method
from clipml.prompts import DualPrompts


@dataclasses.dataclass
class DualCoOpConfig:
    """DualCoOp's prompts and region aggregation (METHODS §4); defaults are clipml's choices."""

    # Own contexts per class (the reference's --csc); false: one positive and one negative
    # context shared by all classes, which the reference README suggests at very small p.
    class_specific: bool = True
    # Also aggregate over the attention pool's mean token (its value path, c_proj(v_proj(.))),
    # as the reference code's dense map does (HW + 1 tokens); ResNet backbones only. false: the
    # HW locations only, so S+/S- and the attention map are purely spatial.
    mean_token: bool = False
    # The negative context's own init words (None: N(0, ctx_std), as the paper's default).
    # Setting it to model.ctx_init gives equal prompts, logits 0 at the start.
    negative_ctx_init: Optional[str] = None

    def __post_init__(self) -> None:
        require(self.negative_ctx_init != "", "model.dualcoop.negative_ctx_init", self.negative_ctx_init,
                "some words or null")


@register_method("dualcoop")
class DualCoOp(Method):
    options = DualCoOpConfig
    moved = {"negative_ctx_init": "negative_ctx_init"}
    spatial = True
    class_subsets = True

    def build(self, model) -> None:
        cfg, own = model.config, model.config.method_options
        model.prompts = DualPrompts(model.backbone, model.classnames, cfg.n_ctx, cfg.ctx_init, cfg.ctx_std,
                                    own.negative_ctx_init, own.class_specific)
        # S+ − S−: the negative prompt already sets each class's offset, so no bias.
        model.head = cosine_head(model, bias="none")
        check_mean_token(model, "dualcoop")

    def score(self, model, dense, text, classes=None) -> Output:
        positive, negative = text
        return aggregate(model, dense, positive, negative, model.config.method_options.mean_token)


def check_mean_token(model, method: str) -> None:
    """The mean token exists only on a tower that ends in CLIP's attention pool (ModifiedResNet)."""
    if model.config.method_options.mean_token and not model.backbone.has_attention_pool:
        raise ConfigError(f"model.{method}.mean_token needs a ModifiedResNet backbone (CLIP's attention pool has "
                          "the mean token); this backbone has none: set it to false")


def aggregate(model, dense, positive, negative, mean_token: bool) -> Output:
    """DualCoOp's region aggregation of `dense` against positive and negative text features."""
    extra = model.backbone.attention_pool_mean_token(dense.tokens) if mean_token else None
    logits, attention = dualcoop_aggregate(dense.tokens, positive, negative, extra=extra)
    return Output(logits=logits, text=positive, attention=attention)
