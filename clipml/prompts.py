"""Prompt learners: hand-crafted templates, shared context (CoOp), class-specific context (CSC),
dual positive/negative context (DualCoOp) and double-grained global/local context (TaI-DPT).
Each returns one text feature per class (the dual and double learners: two)."""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipml.backbones import FrozenCLIP
from clipml.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a photo of a {}."


def handcrafted_text_features(
    backbone: FrozenCLIP, classnames: Sequence[str], templates: Sequence[str] = (DEFAULT_TEMPLATE,)
) -> torch.Tensor:
    """Normalised text features [C, D]; several templates are averaged (normalised) and renormalised."""
    for template in templates:
        if "{}" not in template:
            raise ConfigError(f"prompt template {template!r} has no '{{}}' placeholder for the class name")
    with torch.no_grad():
        features = [
            F.normalize(backbone.encode_text([t.format(name) for name in classnames]), dim=-1)
            for t in templates
        ]
    return F.normalize(torch.stack(features).mean(dim=0), dim=-1)


class HandcraftedPrompts(nn.Module):
    """Zero-shot prompts: features computed once from templates, nothing to learn."""

    def __init__(self, backbone: FrozenCLIP, classnames: Sequence[str], templates: Sequence[str]) -> None:
        super().__init__()
        self.classnames = list(classnames)
        self.register_buffer("features", handcrafted_text_features(backbone, classnames, templates), persistent=False)

    def forward(self, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.features if classes is None else self.features[classes]


class ContextPrompts(nn.Module):
    """Learnable context vectors in front of each class name: `[SOS] v_1..v_M <class> . [EOS]`.

    `class_specific=False` shares one context among classes (CoOp); `True` gives every class its
    own (CSC). With `init` words (e.g. "a photo of a") the last context slots start from those
    words' embeddings and the rest from N(0, std).
    """

    def __init__(
        self,
        backbone: FrozenCLIP,
        classnames: Sequence[str],
        n_ctx: int = 16,
        class_specific: bool = True,
        init: Optional[str] = None,
        std: float = 0.02,
    ) -> None:
        super().__init__()
        if n_ctx < 1:
            raise ConfigError(f"model.n_ctx must be at least 1, got {n_ctx}")
        # A frozen tower is a fixed function: keep it out of this module's parameters and state.
        object.__setattr__(self, "backbone", backbone)
        self.classnames = list(classnames)
        self.n_ctx = n_ctx
        self.class_specific = class_specific

        # Placeholders where the contexts go, located by the backbone (its start token, its cut).
        ids, slots = backbone.context_prompt_ids(self.classnames, n_ctx)
        with torch.no_grad():
            embedding = backbone.token_embedding(ids)
        self.register_buffer("ids", ids, persistent=False)
        self.register_buffer("prefix", embedding[:, : slots.start].clone(), persistent=False)
        self.register_buffer("suffix", embedding[:, slots.stop :].clone(), persistent=False)

        width = embedding.shape[-1]
        shape = (len(self.classnames), n_ctx, width) if class_specific else (n_ctx, width)
        ctx = torch.empty(shape, device=embedding.device).normal_(0.0, std)
        if init:
            words = backbone.word_ids(init).to(backbone.device)
            count = len(words)
            if count > n_ctx:
                raise ConfigError(f"model.ctx_init {init!r} has {count} tokens, more than model.n_ctx={n_ctx}")
            with torch.no_grad():
                ctx[..., n_ctx - count :, :] = backbone.token_embedding(words[None])[0]
        self.ctx = nn.Parameter(ctx)

    def context(self, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Context vectors of every class, [C, M, W] (of `classes` only: [c, M, W])."""
        count = len(self.classnames) if classes is None else len(classes)
        if not self.class_specific:
            return self.ctx.unsqueeze(0).expand(count, -1, -1)
        return self.ctx if classes is None else self.ctx[classes]

    def forward(self, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Text features [C, D]; with `classes` (indices) only theirs, [c, D]: the text tower then
        runs on those prompts alone, and the other classes' contexts get no gradient."""
        prefix, suffix, ids = (self.prefix, self.suffix, self.ids) if classes is None else \
            (self.prefix[classes], self.suffix[classes], self.ids[classes])
        embeddings = torch.cat([prefix, self.context(classes).to(prefix.dtype), suffix], dim=1)
        return self.backbone.encode_embeddings(embeddings, ids)

    # Checkpoints: contexts keyed by class name, so they transfer to another class list.
    def named_contexts(self) -> Dict[str, torch.Tensor]:
        if not self.class_specific:
            return {"": self.ctx.detach()}
        return {name: self.ctx[i].detach() for i, name in enumerate(self.classnames)}

    def load_named_contexts(self, contexts: Dict[str, torch.Tensor]) -> List[str]:
        """Copy learned contexts in by class name; returns the classes that had none.

        Classes without a learned context get the mean of the learned ones (a shared context).
        """
        with torch.no_grad():
            if not self.class_specific:
                shared = contexts.get("")
                if shared is None:
                    shared = torch.stack(list(contexts.values())).mean(dim=0)
                self.ctx.copy_(shared)
                return []
            if "" in contexts:
                fallback = contexts[""]
            else:
                fallback = torch.stack(list(contexts.values())).mean(dim=0)
            missing = [name for name in self.classnames if name not in contexts]
            for i, name in enumerate(self.classnames):
                self.ctx[i].copy_(contexts.get(name, fallback))
        return missing


class DualPrompts(nn.Module):
    """DualCoOp: a positive and a negative context, per class (`class_specific`, the reference's
    --csc) or each shared by all classes.

    Each has its own init words (DualCoOp's POSITIVE/NEGATIVE_PROMPT_INIT; None: N(0, std), the
    paper's default). Both from the same words give equal prompts, logits S+ - S- of exactly 0
    and a start at chance: the negative context gets no words unless asked for.
    """

    def __init__(self, backbone: FrozenCLIP, classnames: Sequence[str], n_ctx: int = 16,
                 init: Optional[str] = None, std: float = 0.02, negative_init: Optional[str] = None,
                 class_specific: bool = True) -> None:
        super().__init__()
        self.classnames = list(classnames)
        self.positive = ContextPrompts(backbone, classnames, n_ctx, class_specific, init, std)
        self.negative = ContextPrompts(backbone, classnames, n_ctx, class_specific, negative_init, std)

    def forward(self, classes: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.positive(classes), self.negative(classes)


class DoubleGrainedPrompts(nn.Module):
    """TaI-DPT's double-grained prompts: a global context, scored against the global feature, and
    a local one, scored against each location (or token); each shared by all classes."""

    def __init__(self, backbone: FrozenCLIP, classnames: Sequence[str], n_ctx: int = 16,
                 init: Optional[str] = None, std: float = 0.02) -> None:
        super().__init__()
        self.classnames = list(classnames)
        self.global_context = ContextPrompts(backbone, classnames, n_ctx, False, init, std)
        self.local_context = ContextPrompts(backbone, classnames, n_ctx, False, init, std)

    def forward(self, classes: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.global_context(classes), self.local_context(classes)
