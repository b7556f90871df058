"""Which classes a training step encodes, and scoring in class chunks: with thousands of classes
the text tower over every prompt, not the batch, sets a step's cost, while only the classes with
a known label in the batch can move the loss."""

from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np
import torch

from clipml.experiment import OptimConfig
from clipml.methods.terms import class_subset_obstacle

logger = logging.getLogger(__name__)

CLASS_DRAWS = 0x636C6173  # "clas": keeps the class draws' seeds apart from the epochs' batch seeds


def known_classes(labels: torch.Tensor) -> torch.Tensor:
    """Indices (ascending) of the classes with a known entry (1 or 0, not -1) in any row of `labels` [B, C]."""
    return (labels != -1).any(dim=0).nonzero(as_tuple=True)[0]


def sampled_classes(labels: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """The batch's known classes plus other classes drawn uniformly without replacement until
    there are `count` (all known ones are kept when they are more), ascending."""
    known = (labels != -1).any(dim=0).cpu()
    others = (~known).nonzero(as_tuple=True)[0]
    extra = max(0, min(count - int(known.sum()), len(others)))
    drawn = others[torch.randperm(len(others), generator=generator)[:extra]]
    known[drawn] = True
    return known.nonzero(as_tuple=True)[0].to(labels.device)


class ClassSelector:
    """The classes of each training step under optim.train_classes / optim.sampled_classes (None:
    all classes). Its own generator, so "known" draws nothing and leaves the other draws alone;
    seeded per epoch (`on_epoch_start`), so a resumed run draws what an uninterrupted one does."""

    def __init__(self, optim: OptimConfig, model, seed: int) -> None:
        obstacle = class_subset_obstacle(model.config)
        self.sample = optim.sampled_classes
        self.known = optim.train_classes != "all" and obstacle is None
        self.seed = seed
        self.generator = torch.Generator()
        self.on_epoch_start(0)
        if optim.train_classes == "auto" and obstacle and not self.sample:
            logger.info("every training step encodes all %d classes: %s", len(model.classnames), obstacle)

    def on_epoch_start(self, epoch: int) -> None:
        """Draw epoch `epoch`'s (0-based) classes from a stream of (seed, epoch) alone."""
        self.generator.manual_seed(int(np.random.SeedSequence([self.seed, epoch, CLASS_DRAWS]).generate_state(1)[0]))

    def __call__(self, labels: torch.Tensor) -> Optional[torch.Tensor]:
        if self.sample:
            return sampled_classes(labels, self.sample, self.generator)
        return known_classes(labels) if self.known else None


def select_text(text, classes: torch.Tensor):
    """The rows of `classes` of text features (one tensor [C, D] or a tuple of them)."""
    return tuple(part[classes] for part in text) if isinstance(text, tuple) else text[classes]


def score_in_chunks(model, dense, text, chunk: int,
                    read_attention: Optional[Callable[[torch.Tensor, torch.Tensor], None]] = None) -> torch.Tensor:
    """Logits [B, C] of `model.forward_dense(dense, text)` computed over classes `chunk` at a time
    (0: all at once). Each chunk's attention maps [B, c, N] (where the model gives them) go to
    `read_attention(classes, maps)` and are dropped, so per-class memory ([B, c, N], [B, c, D])
    is bounded by the chunk, however many classes the split has."""
    count, first = len(model.classnames), text[0] if isinstance(text, tuple) else text
    chunk = chunk if chunk and chunk < count else count
    logits = []
    for start in range(0, count, chunk):
        classes = torch.arange(start, min(start + chunk, count), device=first.device)
        output = (model.forward_dense(dense, text) if chunk == count
                  else model.forward_dense(dense, select_text(text, classes), classes))
        logits.append(output.logits)
        if read_attention is not None and output.attention is not None:
            read_attention(classes, output.attention)
    return logits[0] if len(logits) == 1 else torch.cat(logits, dim=1)
