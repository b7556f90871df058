"""Where the trainer gets dense features from. The trainable part never depends on whether they
come from the image tower (here) or from a feature cache: both yield the same batches."""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import RandomSampler

from clipml.backbones import Dense, FrozenCLIP
from clipml.data.base import MultiLabelSplit
from clipml.data.loader import make_loader
from clipml.data.transforms import Normalize255
from clipml.engine.cache import FeatureCache

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


class CachedFeatureSource:
    """Reads the features of a split's images from a FeatureCache: same batches as
    ImageFeatureSource, without running the image tower.

    The split may be any subset of the cached image list (the training and validation parts
    share one cache). With `random_views`, every image gets one of the cached views at random
    per pass, drawn from `seed`; otherwise view 0 (the evaluation transform). The shuffle order
    for a seed is the one ImageFeatureSource's DataLoader uses.
    """

    def __init__(self, split: MultiLabelSplit, cache: FeatureCache, batch_size: int, device: torch.device,
                 shuffle: bool = False, random_views: bool = False) -> None:
        self.split = split
        self.cache = cache
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.random_views = random_views
        self.positions = cache.positions(split)
        self.labels = torch.from_numpy(split.labels.copy())

    def __len__(self) -> int:
        """Number of batches."""
        return (len(self.split) + self.batch_size - 1) // self.batch_size

    def views(self, seed: Optional[int] = None) -> np.ndarray:
        """The view each image of the split gets in the pass seeded by `seed`."""
        count = len(self.split)
        if not self.random_views or self.cache.views == 1:
            return np.zeros(count, dtype=np.int64)
        generator = torch.Generator()
        generator.manual_seed(seed + 7_919 if seed is not None else int(torch.randint(2**62, ())))
        return torch.randint(self.cache.views, (count,), generator=generator).numpy()

    def batches(self, seed: Optional[int] = None) -> Iterator[Batch]:
        """One pass; `seed` fixes the shuffle order and the views."""
        count = len(self.split)
        if seed is not None:
            torch.manual_seed(seed)  # as ImageFeatureSource, so both leave the global RNG alike
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ())))
            # A DataLoader draws its workers' base seed from the generator before shuffling.
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            order = np.fromiter(RandomSampler(range(count), generator=generator), dtype=np.int64, count=count)
        else:
            order = np.arange(count)
        views = self.views(seed)
        for start in range(0, count, self.batch_size):
            index = order[start:start + self.batch_size]
            tokens, pooled = self.cache.read(self.positions[index], views[index])
            dense = Dense(tokens=tokens.to(self.device, non_blocking=True).float(),
                          pooled=pooled.to(self.device, non_blocking=True).float(), grid=self.cache.grid)
            yield dense, self.labels[index].to(self.device), torch.from_numpy(index)
