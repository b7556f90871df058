"""Zero-shot CLIP: hand-written prompts (model.templates), nothing learned; the tower's own
logit scale and bias. Every run also reports it as its baseline (`baseline_config`)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from clipml.decoupler import dense_pool_scores
from clipml.methods.base import Method, Output, cosine_head
from clipml.methods.registry import register_method
from clipml.prompts import HandcraftedPrompts


@dataclasses.dataclass
class ZeroShotConfig:
    """How zero-shot CLIP scores an image."""

    scoring: Literal["global", "dense"] = "global"  # the pooled feature, or per-class softmax pooling of the dense map


@register_method("zero_shot")
class ZeroShot(Method):
    options = ZeroShotConfig
    moved = {"zero_shot_scoring": "scoring"}
    learns_prompts = False
    tower_scores = True
    class_subsets = True

    def build(self, model) -> None:
        model.prompts = HandcraftedPrompts(model.backbone, model.classnames, model.config.templates)
        model.head = cosine_head(model, bias="tower")

    def score(self, model, dense, text, classes=None) -> Output:
        if model.config.method_options.scoring == "dense":
            logits, attention = dense_pool_scores(dense.tokens, text, float(model.head.log_temperature.exp()))
            if model.head.bias is not None:
                logits = logits + model.head.bias
            return Output(logits=logits, text=text, attention=attention)
        return Output(logits=model.head(dense.pooled, text), text=text)
