"""Where the trainer gets dense features from. The trainable part never depends on whether they
come from the image tower (here) or from a feature cache: both yield the same batches."""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import torch

from clipml.backbones import Dense, FrozenCLIP
from clipml.data.base import MultiLabelSplit
from clipml.data.loader import make_loader
from clipml.data.transforms import Normalize255

Batch = Tuple[Dense, torch.Tensor, torch.Tensor]  # dense features, int8 labels [B, C], indices [B]


class ImageFeatureSource:
    """Decodes, transforms and encodes the images of a split with the frozen image tower.

    `transform` must return uint8 images (`normalize=False`): workers move a quarter of the
    bytes and the batch is normalised on the device with the backbone's mean and std.
    """

    def __init__(self, split: MultiLabelSplit, backbone: FrozenCLIP, transform: Callable,
                 batch_size: int, workers: int = 2, shuffle: bool = False) -> None:
        self.split = split
        self.backbone = backbone
        self.transform = transform
        self.batch_size = batch_size
        self.workers = workers
        self.shuffle = shuffle
        self.normalize = Normalize255(backbone.mean, backbone.std).to(backbone.device)

    def __len__(self) -> int:
        """Number of batches."""
        return (len(self.split) + self.batch_size - 1) // self.batch_size

    def batches(self, seed: Optional[int] = None) -> Iterator[Batch]:
        """One pass; `seed` fixes the shuffle order (and the workers' augmentation seeds)."""
        device = self.backbone.device
        if seed is not None:
            torch.manual_seed(seed)
        loader = make_loader(self.split, self.transform, self.batch_size, shuffle=self.shuffle,
                             workers=self.workers, seed=seed)
        for images, labels, index in loader:
            with torch.no_grad():
                images = self.normalize(images.to(device, non_blocking=True))
                dense = self.backbone.encode_dense(images)
            yield dense, labels.to(device), index
