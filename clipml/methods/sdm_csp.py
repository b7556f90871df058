"""SDM + CSP (METHODS §3): class-specific learned prompts, and a semantic decoupler that pools the
dense map into one visual feature per class, each scored against its own prompt."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch

from clipml.decoupler import SemanticDecoupler
from clipml.config import require
from clipml.errors import ConfigError
from clipml.methods.base import Method, Output, cosine_head
from clipml.methods.registry import register_method
from clipml.prompts import ContextPrompts, handcrafted_text_features


@dataclasses.dataclass
class SdmCspConfig:
    """The semantic decoupler's guidance and shape (METHODS §3)."""

    # Decoupler guidance: "handcrafted" (frozen CLIP text of the templates), "learned" (the learned
    # prompt's feature, detached) or a path to a .npy of word vectors [C, G] in class order.
    guidance: str = "handcrafted"
    decoupler_dim: int = 512  # width of the semantic decoupler's attention space
    # "random": PyTorch's default init (the paper's); "uniform": attention starts uniform (P = 0), so
    # sdm_csp starts from the mean of the dense tokens, for an average-pooled tower its global feature.
    decoupler_init: Literal["random", "uniform"] = "random"
    # A d×d linear layer (with bias) between the decoupler's tanh and its output layer, as
    # HCP-MLR-PL's SemanticDecoupling (fc3); false: the seed paper's P: d -> 1 directly (METHODS §3).
    decoupler_extra_linear: bool = False

    def __post_init__(self) -> None:
        require(self.guidance in ("handcrafted", "learned") or self.guidance.endswith(".npy"), "model.sdm_csp.guidance",
                self.guidance, "'handcrafted', 'learned' or a .npy file")
        require(self.decoupler_dim >= 1, "model.sdm_csp.decoupler_dim", self.decoupler_dim, "at least 1")


@register_method("sdm_csp")
class SdmCsp(Method):
    options = SdmCspConfig
    moved = {name: name for name in ("guidance", "decoupler_dim", "decoupler_init", "decoupler_extra_linear")}
    spatial = True
    class_features = True
    class_subsets = True  # the decoupler attends for each class with its own guidance row

    def build(self, model) -> None:
        cfg, own = model.config, model.config.method_options
        model.prompts = ContextPrompts(model.backbone, model.classnames, cfg.n_ctx, True, cfg.ctx_init, cfg.ctx_std)
        model.head = cosine_head(model)
        guidance = _fixed_guidance(model, own.guidance)
        guide_dim = model.backbone.embed_dim if guidance is None else guidance.shape[1]
        if guidance is not None:
            model.register_buffer("guidance", guidance, persistent=False)
        model.decoupler = SemanticDecoupler(model.backbone.embed_dim, guide_dim, own.decoupler_dim,
                                            init=own.decoupler_init, extra_linear=own.decoupler_extra_linear)

    def score(self, model, dense, text, classes=None) -> Output:
        guidance = getattr(model, "guidance", None)
        if guidance is None:
            guidance = text.detach()
        elif classes is not None:
            guidance = guidance[classes]
        features, attention = model.decoupler(dense.tokens, guidance)
        return Output(model.head(features, text), text, features, attention)

    def scaled_module(self, model):
        return model.decoupler


def _fixed_guidance(model, source: str) -> Optional[torch.Tensor]:
    if source == "learned":
        return None
    if source == "handcrafted":
        return handcrafted_text_features(model.backbone, model.classnames, model.config.templates)
    path = Path(source)
    if path.suffix != ".npy" or not path.is_file():
        raise ConfigError(
            f"model.sdm_csp.guidance must be 'handcrafted', 'learned' or an existing .npy file, got {source!r}")
    vectors = np.load(path, allow_pickle=False)
    if vectors.ndim != 2 or vectors.shape[0] != len(model.classnames):
        raise ConfigError(
            f"{path}: expected word vectors of shape [{len(model.classnames)} classes, dim], found {vectors.shape}")
    return torch.as_tensor(vectors, dtype=torch.float32)
