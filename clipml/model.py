"""MultiLabelCLIP: a frozen backbone, a prompt learner and a scoring head, both declared by the
method registered under ``model.method`` (clipml.methods), plus the training terms the config
switches on. The model knows no method by name."""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import torch
from torch import nn

from clipml.backbones import Dense, FrozenCLIP
from clipml.config import require, selected_section
from clipml.errors import ConfigError
from clipml.methods import (BlendingConfig, Output, TransportConfig, get_method, method_sections, moved_keys,
                            terms)
from clipml.prompts import DEFAULT_TEMPLATE


@dataclasses.dataclass
class ModelConfig:
    # A method registered in clipml.methods (an unknown name lists them); its own options are
    # the section model.<method>, offered for that method only.
    method: str = "sdm_csp"
    n_ctx: int = 16  # learned context vectors per prompt
    ctx_init: Optional[str] = None  # e.g. "a photo of a": the last context slots start from these words
    ctx_std: float = 0.02  # std of the random context initialisation
    templates: List[str] = dataclasses.field(default_factory=lambda: [DEFAULT_TEMPLATE])  # hand-crafted prompts
    # Scale of the cosine logits; null: the backbone's own logit scale (OpenAI's CLIP: 100) and,
    # where the family has one (sigmoid-trained towers), its logit bias.
    temperature: Optional[float] = 100.0
    learn_temperature: bool = False  # train the temperature too
    # A learned logit bias with this initial value for the cosine heads (None: no bias, as METHODS §3,
    # or the tower's own with temperature null; dualcoop and taidpt never take one, zero_shot only the tower's).
    logit_bias: Optional[float] = None
    blending: BlendingConfig = dataclasses.field(default_factory=BlendingConfig)
    transport: TransportConfig = dataclasses.field(default_factory=TransportConfig)
    # The selected method's own section, read and written as model.<method>.
    method_options: object = selected_section("method", method_sections, moved_keys)

    @classmethod
    def of(cls, method: str, **keys) -> "ModelConfig":
        """A ModelConfig from flat keywords: the common keys, and `method`'s own (routed into its
        section model.<method>); a key of neither is a TypeError, as for any dataclass."""
        own = method_sections().get(method)
        names = {f.name for f in dataclasses.fields(own)} if own else set()
        section = {key: keys.pop(key) for key in list(keys) if key in names}
        return cls(method=method, method_options=own(**section) if own else None, **keys)

    def __post_init__(self) -> None:
        sections = method_sections()
        if self.method not in sections:
            get_method(self.method)  # the ConfigError that lists the methods
        expected = sections[self.method]
        if self.method_options is None and expected is not None:
            self.method_options = expected()
        if not (self.method_options is None if expected is None else isinstance(self.method_options, expected)):
            wanted = "no options" if expected is None else expected.__name__
            raise ConfigError(f"model.{self.method}: method {self.method!r} takes {wanted}, "
                              f"got {type(self.method_options).__name__}")
        require(self.n_ctx >= 1, "model.n_ctx", self.n_ctx, "at least 1")
        require(self.ctx_init != "", "model.ctx_init", self.ctx_init, "some words or null")
        require(self.ctx_std >= 0, "model.ctx_std", self.ctx_std, ">= 0")
        require(bool(self.templates), "model.templates", self.templates, "at least one template")
        for template in self.templates:
            require("{}" in template, "each of model.templates", template, "a text with a '{}' for the class name")
        require(self.temperature is None or self.temperature > 0, "model.temperature", self.temperature,
                "positive (or null: the backbone's own logit scale)")
        terms.check_terms(self)


class MultiLabelCLIP(nn.Module):
    """Per-class logits from images (or from their dense features, e.g. read from a cache)."""

    def __init__(self, backbone: FrozenCLIP, classnames: Sequence[str], config: ModelConfig) -> None:
        super().__init__()
        repeated = sorted({name for name in classnames if list(classnames).count(name) > 1})
        if repeated:  # contexts and thresholds are keyed by class name
            raise ConfigError(f"class names must be distinct, found {repeated} more than once")
        self.backbone = backbone
        self.classnames = list(classnames)
        self.config = config
        self.method = get_method(config.method)
        self.method.build(self)
        self.terms = terms.build_terms(self)
        self.to(backbone.device)

    def text_features(self, classes: Optional[torch.Tensor] = None):
        """Text features of the current prompts: [C, D], or a pair for methods with two prompts;
        with `classes` (indices, methods with `class_subsets`) those classes' alone."""
        return self.prompts() if classes is None else self.prompts(self._subset(classes))

    def encode(self, images: torch.Tensor) -> Dense:
        with torch.no_grad():
            return self.backbone.encode_dense(images)

    def forward(self, images: torch.Tensor, text=None) -> Output:
        return self.forward_dense(self.encode(images), text)

    def forward_dense(self, dense: Dense, text=None, classes: Optional[torch.Tensor] = None) -> Output:
        """Scores from dense features (or a method's own training data, e.g. captions standing in
        for images); `text` (from `text_features()`) can be passed to reuse it. With `classes`
        (indices), the scores of those classes only, [B, c] in their order (`text` then holds theirs)."""
        if classes is None:
            return self.method.score(self, dense, self.text_features() if text is None else text)
        classes = self._subset(classes)
        return self.method.score(self, dense, self.text_features(classes) if text is None else text, classes)

    def _subset(self, classes: torch.Tensor) -> torch.Tensor:
        if not self.method.class_subsets:
            raise ConfigError(f"method {self.config.method!r} scores all classes together; it cannot score a "
                              f"subset of them")
        return classes

    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def checkpoint_buffers(self) -> List[str]:
        """Learned state that is not a parameter (the training terms', e.g. DSRB's prototypes)."""
        return [name for term in self.terms for name in term.checkpoint_buffers(self)]

    def class_rows(self) -> List[str]:
        """Checkpoint tensors with one row per class, which follow the class names when loaded."""
        return self.method.class_rows(self) + [name for term in self.terms for name in term.class_rows(self)]
