"""Captions as the training batches of TaI-DPT (METHODS §12): the frozen text tower turns each
caption into a global feature and per-token features, which stand in for an image's global
feature and dense map. The trainer sees the same (dense, labels, index) batches as from images."""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from clipml.backbones import FrozenCLIP
from clipml.data import readable_names
from clipml.data.base import MultiLabelSplit
from clipml.data.captions import CaptionSet, load_captions
from clipml.engine.distributed import DistContext, global_batches, shard
from clipml.experiment import ExperimentConfig


class CaptionSource:
    """Encodes batches of captions with the frozen text tower (once per batch and epoch: the
    tower is small next to the image tower, and a caption set can be far larger than memory
    allows to keep per-token features of)."""

    def __init__(self, captions: CaptionSet, backbone: FrozenCLIP, batch_size: int, shuffle: bool = True) -> None:
        self.captions = captions.captions
        self.labels = torch.from_numpy(np.ascontiguousarray(captions.labels))
        self.report = captions.report
        self.backbone = backbone
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.context: Optional[DistContext] = None  # set by the trainer under data parallelism

    def __len__(self) -> int:
        """Number of batches."""
        return (len(self.captions) + self.batch_size - 1) // self.batch_size

    def batches(self, seed: Optional[int] = None, sharded: bool = True) -> Iterator:
        """One pass; `seed` fixes the shuffle order (sharding as ImageFeatureSource)."""
        if seed is not None:
            torch.manual_seed(seed)  # as the image sources, so all leave the global RNG alike
        context = self.context if sharded else None
        device = self.backbone.device
        for index in global_batches(len(self.captions), self.batch_size, self.shuffle, seed):
            index = shard(index, context)
            if not len(index):
                continue
            with torch.no_grad():
                dense = self.backbone.encode_text_dense([self.captions[i] for i in index])
            yield dense, self.labels[index].to(device), torch.from_numpy(index)


def build_caption_source(cfg: ExperimentConfig, backbone: FrozenCLIP, train: MultiLabelSplit,
                         context: Optional[DistContext] = None) -> CaptionSource:
    """The captions of `cfg.data.captions`, labelled with the training split's classes."""
    captions = load_captions(cfg.data.captions, cfg.data.dataset, train.classes, readable_names(train),
                             cfg.data.options)
    source = CaptionSource(captions, backbone, cfg.data.batch_size)
    source.context = context
    return source
