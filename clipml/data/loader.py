"""Torch Dataset and DataLoader over a MultiLabelSplit."""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from clipml.data.base import MultiLabelSplit
from clipml.data.images import ImageDecodeError, decode_image
from clipml.errors import ClipmlError

DECODE_HINT = "set data.options.on_undecodable_image=skip to leave such images out"


class FailedItem:
    """A clipml error raised while loading an item, carried to the main process as a value: there
    it is raised as itself, not wrapped in the DataLoader's worker traceback."""

    def __init__(self, error: ClipmlError) -> None:
        self.error = error


def carry_errors(getitem: Callable) -> Callable:
    """Decorate a Dataset's `__getitem__`: in a worker process a ClipmlError is returned as a
    FailedItem (ImageLoader raises it in the main process); in the main process it is raised."""

    @functools.wraps(getitem)
    def wrapped(self, index):
        try:
            return getitem(self, index)
        except ClipmlError as error:
            if isinstance(error, ImageDecodeError):
                error = ImageDecodeError(f"{error}; {DECODE_HINT}")
            if get_worker_info() is None:
                raise error from None
            return FailedItem(error)

    return wrapped


def _collate(items):
    return next((item for item in items if isinstance(item, FailedItem)), None) or collate(items)


class ImageLoader(DataLoader):
    """A DataLoader over a Dataset whose `__getitem__` uses `carry_errors`: a bad item ends the
    pass with its own one-line error (the file named), whichever worker loaded it."""

    def __init__(self, dataset: Dataset, **options) -> None:
        super().__init__(dataset, collate_fn=_collate, **options)

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, FailedItem):
                raise batch.error
            yield batch

def read_image(split: MultiLabelSplit, index: int) -> Union[torch.Tensor, Image.Image]:
    """Image `index` of `split`, ready for a transform (which starts with PILToTensor, a no-op on a
    tensor): files through `clipml.data.images.decode_image` (JPEGs as torchvision tensors),
    splits that render in memory (overriding `open_image`) through their `open_image`."""
    if type(split).open_image is MultiLabelSplit.open_image and split.root is not None:
        return decode_image(split.image_path(index))
    return split.open_image(index)


def collate(batch):
    """default_collate, but images [3, H, W] whose pixels lie channels-last in memory (what the
    decoders and torch's uint8 resize give) are stacked channels-last: a plain copy where the
    default makes a transposing one, about a tenth of a worker's time per image at 448 px. The
    batch is the same [B, 3, H, W] tensor in another memory layout; `Normalize255` makes it
    contiguous on the device. Items are images or tuples whose first element is the image."""
    images = [item[0] if isinstance(item, tuple) else item for item in batch]
    if all(image.dim() == 3 and image.permute(1, 2, 0).is_contiguous() for image in images):
        stacked = default_collate([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)
    else:
        stacked = default_collate(images)
    if not isinstance(batch[0], tuple):
        return stacked
    return [stacked, *default_collate([item[1:] for item in batch])]


class ImageLabelDataset(Dataset):
    """Items `(image_tensor, labels int8 [C], index)`; images come from `read_image`, so
    in-memory splits work, and a missing or corrupt file raises a DataError naming it. Each
    item's label row is densified from the split's sparse labels when it is read.

    With `seed`, each image's random augmentation is drawn from a generator seeded by
    (seed, index): the same crop whatever the batch, worker or data-parallel rank it lands in.
    """

    def __init__(self, split: MultiLabelSplit, transform: Callable, seed: Optional[int] = None) -> None:
        self.split = split
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.split)

    @carry_errors
    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor, int]:
        image = read_image(self.split, index)
        labels = torch.from_numpy(self.split.targets.dense([index])[0])
        if self.seed is None:
            return self.transform(image), labels, index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + index)
            return self.transform(image), labels, index


def make_loader(
    split: MultiLabelSplit,
    transform: Callable,
    batch_size: int = 32,
    *,
    shuffle: bool = False,
    workers: int = 2,
    pin_memory: Optional[bool] = None,
    drop_last: bool = False,
    seed: Optional[int] = None,
    batch_sampler: Optional[Sequence[Sequence[int]]] = None,
) -> ImageLoader:
    """A DataLoader over `split`; `seed` fixes the shuffle order and every image's augmentation;
    pin_memory defaults to CUDA availability.

    `batch_sampler` (explicit lists of indices) replaces batch_size/shuffle/drop_last. Use
    drop_last=False for evaluation: every test image must be scored.
    """
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    batching = (dict(batch_sampler=batch_sampler) if batch_sampler is not None
                else dict(batch_size=batch_size, shuffle=shuffle, drop_last=drop_last))
    return ImageLoader(
        ImageLabelDataset(split, transform, seed),
        num_workers=workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        generator=generator,
        persistent_workers=False,
        **batching,
    )
