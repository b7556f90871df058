"""Where the trainer gets dense features from. The trainable part never depends on whether they
come from the image tower (here) or from a feature cache: both yield the same batches."""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import torch

from clipml.backbones import Dense, FrozenCLIP
from clipml.data.base import MultiLabelSplit
from clipml.data.loader import make_loader
from clipml.data.transforms import Normalize255
from clipml.engine.cache import FeatureCache
from clipml.engine.distributed import DistContext, global_batches, shard

Batch = Tuple[Dense, torch.Tensor, torch.Tensor]  # dense features, int8 labels [B, C], indices [B]


class CountedPass:
    """One pass of `source.batches()` with its number of batches (`len(source)`), so a progress
    bar shows a total. The generator is not started here: seeding stays where it was."""

    def __init__(self, batches: Iterator[Batch], count: int) -> None:
        self.batches, self.count = batches, count

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return self.count


class ImageFeatureSource:
    """Decodes, transforms and encodes the images of a split with the frozen image tower.

    `transform` must return uint8 images (`normalize=False`): workers move a quarter of the
    bytes and the batch is normalised on the device with the backbone's mean and std. On CUDA
    the batches are pinned and copied without waiting, so the device never idles on a copy.
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
        self.context: Optional[DistContext] = None  # set by the trainer under data parallelism

    def __len__(self) -> int:
        """Number of batches."""
        return (len(self.split) + self.batch_size - 1) // self.batch_size

    def batches(self, seed: Optional[int] = None, sharded: bool = True) -> Iterator[Batch]:
        """One pass; `seed` fixes the shuffle order (and the workers' augmentation seeds).

        Under data parallelism each rank gets its part of every global batch (`sharded=False`:
        all of it, e.g. for the DSRB prototype pass that every rank must agree on)."""
        device = self.backbone.device
        if seed is not None:
            torch.manual_seed(seed)
        plan = global_batches(len(self.split), self.batch_size, self.shuffle, seed)
        context = self.context if sharded else None
        plan = [shard(index, context) for index in plan]
        loader = make_loader(self.split, self.transform, workers=self.workers, seed=seed,
                             pin_memory=device.type == "cuda",
                             batch_sampler=[index.tolist() for index in plan if len(index)])
        for images, labels, index in loader:
            with torch.no_grad():
                dense = self.backbone.encode_dense(self.normalize(images))
            yield dense, labels.to(device, non_blocking=True), index


class CachedFeatureSource:
    """Reads the features of a split's images from a FeatureCache: same batches as
    ImageFeatureSource, without running the image tower.

    The split may be any subset of the cached image list (the training and validation parts
    share one cache). With `random_views`, every image gets one of the cached views at random
    per pass, drawn from `seed`; otherwise view 0 (the evaluation transform). The batches for a
    seed are the ones ImageFeatureSource yields.
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
        self.context: Optional[DistContext] = None  # set by the trainer under data parallelism

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

    def batches(self, seed: Optional[int] = None, sharded: bool = True) -> Iterator[Batch]:
        """One pass; `seed` fixes the shuffle order and the views (sharding as ImageFeatureSource)."""
        if seed is not None:
            torch.manual_seed(seed)  # as ImageFeatureSource, so both leave the global RNG alike
        views = self.views(seed)
        context = self.context if sharded else None
        for index in global_batches(len(self.split), self.batch_size, self.shuffle, seed):
            index = shard(index, context)
            if not len(index):
                continue
            tokens, pooled = self.cache.read(self.positions[index], views[index])
            dense = Dense(tokens=tokens.to(self.device, non_blocking=True).float(),
                          pooled=pooled.to(self.device, non_blocking=True).float(), grid=self.cache.grid)
            labels = torch.from_numpy(self.split.targets.dense(index))  # [B, C], densified per batch
            yield dense, labels.to(self.device), torch.from_numpy(index)
