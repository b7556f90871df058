"""TaI-DPT (METHODS §12): double-grained prompts (a global and a local context, shared by all
classes), trained on captions standing in for images, scoring images with both branches."""

from __future__ import annotations

import dataclasses

from clipml.backbones import TextDense
from clipml.decoupler import double_grained_scores
from clipml.config import require
from clipml.methods.base import Method, Output, cosine_head
from clipml.methods.registry import register_method
from clipml.prompts import DoubleGrainedPrompts


@dataclasses.dataclass
class TaIDPTConfig:
    """TaI-DPT's double-grained scoring (METHODS §12); defaults are the reference code's."""

    scale: float = 4.0  # both branches: scale · cosine
    text_spatial_scale: float = 50.0  # softmax sharpness over a caption's tokens (training)
    image_spatial_scale: float = 40.0  # softmax sharpness over an image's locations (evaluation)
    global_weight: float = 0.5  # score = w · global + (1 − w) · local

    def __post_init__(self) -> None:
        for key in ("scale", "text_spatial_scale", "image_spatial_scale"):
            require(getattr(self, key) > 0, f"model.taidpt.{key}", getattr(self, key), "> 0")
        require(0.0 <= self.global_weight <= 1.0, "model.taidpt.global_weight", self.global_weight, "in [0, 1]")


@register_method("taidpt")
class TaIDPT(Method):
    options = TaIDPTConfig
    spatial = True
    image_training = False
    class_subsets = True  # both branches score each class against its own prompts

    def build(self, model) -> None:
        cfg = model.config
        model.prompts = DoubleGrainedPrompts(model.backbone, model.classnames, cfg.n_ctx, cfg.ctx_init, cfg.ctx_std)
        model.head = cosine_head(model, bias="none", learnable=False)  # it scores with its own fixed scales

    def score(self, model, dense, text, classes=None) -> Output:
        global_text, local_text = text
        own = model.config.method_options
        is_text = isinstance(dense, TextDense)
        spatial = own.text_spatial_scale if is_text else own.image_spatial_scale
        global_logits, local_logits, attention = double_grained_scores(
            dense.pooled, dense.tokens, global_text, local_text, own.scale, spatial, dense.mask if is_text else None)
        weight = own.global_weight
        logits = weight * global_logits + (1 - weight) * local_logits
        return Output(logits=logits, text=global_text, attention=attention, parts=(global_logits, local_logits))

    def training_source(self, cfg, backbone, split, context, images):
        """Texts as images: captions labelled with the training split's classes replace its images."""
        from clipml.engine.captions import build_caption_source

        return build_caption_source(cfg, backbone, split, context)

    def summary(self, source):
        return {"captions": source.report}
