"""CoOp: one learned context shared by all classes, scored against the pooled image feature."""

from __future__ import annotations

from clipml.methods.base import Method, Output, cosine_head
from clipml.methods.registry import register_method
from clipml.prompts import ContextPrompts


@register_method("coop")
class CoOp(Method):
    class_specific = False
    class_subsets = True

    def build(self, model) -> None:
        cfg = model.config
        model.prompts = ContextPrompts(model.backbone, model.classnames, cfg.n_ctx, self.class_specific,
                                       cfg.ctx_init, cfg.ctx_std)
        model.head = cosine_head(model)

    def score(self, model, dense, text, classes=None) -> Output:
        return Output(logits=model.head(dense.pooled, text), text=text)
