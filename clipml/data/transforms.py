"""Image transforms: PIL image -> normalised float tensor [3, S, S].

Mean and std are the backbone's (the caller passes them). Test images are resized to S x S
without cropping (the MLR-PL convention: no object is cut away). Training policies:

- `resized_crop` (default): random resized crop to S (scale `scale`) + horizontal flip;
- `multiscale_crop`: the SSGRL/SARB policy: resize to `scale_size`, random square crop of a
  size drawn from a list, resize to S, horizontal flip;
- `randaugment`: `resized_crop` followed by torchvision's RandAugment.
"""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from clipml.errors import ConfigError

POLICIES = ("resized_crop", "multiscale_crop", "randaugment")
BICUBIC = InterpolationMode.BICUBIC


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ConfigError(f"mean and std need 3 values each (std > 0), got mean={mean}, std={std}")
    return [T.ToTensor(), T.Normalize(list(mean), list(std))]


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """Resize to size x size (bicubic), to tensor, normalise."""
    return T.Compose([T.Resize((size, size), interpolation=BICUBIC), *_to_tensor(mean, std)])


def train_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    policy: str = "resized_crop",
    *,
    scale: Tuple[float, float] = (0.5, 1.0),
    hflip: bool = True,
    scale_size: int = 512,
    crop_sizes: Sequence[int] = (512, 448, 384, 320, 256),
    randaugment_ops: int = 2,
    randaugment_magnitude: int = 9,
) -> Callable:
    """A training augmentation policy (see the module docstring)."""
    if policy not in POLICIES:
        raise ConfigError(f"augmentation policy must be one of {POLICIES}, got {policy!r}")
    flip = [T.RandomHorizontalFlip()] if hflip else []
    if policy == "multiscale_crop":
        if any(c > scale_size for c in crop_sizes):
            raise ConfigError(f"crop sizes {list(crop_sizes)} must not exceed scale_size {scale_size}")
        steps = [
            T.Resize((scale_size, scale_size), interpolation=BICUBIC),
            T.RandomChoice([T.RandomCrop(c) for c in crop_sizes]),
            T.Resize((size, size), interpolation=BICUBIC),
        ]
    else:
        steps = [T.RandomResizedCrop(size, scale=tuple(scale), interpolation=BICUBIC)]
        if policy == "randaugment":
            steps.append(T.RandAugment(num_ops=randaugment_ops, magnitude=randaugment_magnitude))
    return T.Compose([*steps, *flip, *_to_tensor(mean, std)])
