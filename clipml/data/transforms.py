"""Image transforms: PIL image or uint8 tensor [3, H, W] -> normalised float tensor [3, S, S]
(or the uint8 tensor, normalised later on the device).

The decoded image becomes a uint8 tensor first (JPEG files arrive as one from
`clipml.data.loader.read_image`); resizing, cropping and flipping run on that tensor (torch's
antialiased uint8 kernels are several times faster than PIL's on one core), then one fused step
converts to float and normalises.

Mean, std and the resize kernel are the backbone's (the caller passes them: its library's own
kernel, e.g. bicubic for CLIP, bilinear for PE-Core, MobileCLIP 2 and SigLIP 2 NaFlex). Test images
are resized to S x S without cropping whatever the library does (the MLR-PL convention: a crop
would cut away objects at the borders; only the kernel follows the library). Training policies:

- `resized_crop` (default): random resized crop to S (scale `scale`) + horizontal flip;
- `multiscale_crop`: the SSGRL/SARB policy: resize to `scale_size`, random square crop of a
  size drawn from a list, resize to S, horizontal flip;
- `randaugment`: `resized_crop` followed by torchvision's RandAugment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence, Tuple

import torch
from torchvision.transforms import v2 as T
from torchvision.transforms import InterpolationMode

from clipml.errors import ConfigError

if TYPE_CHECKING:
    from clipml.backbones.base import ImagePreprocess

POLICIES = ("resized_crop", "multiscale_crop", "randaugment")
BICUBIC = InterpolationMode.BICUBIC
# The libraries' kernel names -> torchvision's tensor kernels (antialiased when shrinking, like PIL's);
# PIL's "nearest" picks the pixel whose centre is nearest, which is torchvision's NEAREST_EXACT.
KERNELS = {"bicubic": BICUBIC, "bilinear": InterpolationMode.BILINEAR, "nearest": InterpolationMode.NEAREST_EXACT}


def kernel(interpolation: str) -> InterpolationMode:
    """The torchvision kernel of a library's resize kernel name, or one error naming it."""
    if interpolation not in KERNELS:
        raise ConfigError(f"image resize kernel {interpolation!r} (the backbone library's preprocessing) is not "
                          f"supported on uint8 tensors; clipml resizes with one of {sorted(KERNELS)}")
    return KERNELS[interpolation]


class RandomSizeCrop(torch.nn.Module):
    """Random square crop whose size is drawn from `sizes` with torch's generator.

    (torchvision's RandomChoice draws with Python's `random`, which `torch.manual_seed`
    does not fix.)
    """

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__()
        self.crops = [T.RandomCrop(int(size)) for size in sizes]

    def forward(self, image):
        return self.crops[int(torch.randint(len(self.crops), ()))](image)


class Normalize255(torch.nn.Module):
    """uint8 [..., 3, H, W] in 0..255 -> float (x / 255 - mean) / std, in one pass, on the
    device the module lives on.

    Works on one image in a worker or on a whole batch on the accelerator (move the module
    there with `.to(device)`): a batch from the CPU is copied over as uint8 (a quarter of the
    bytes of float32), without waiting when it comes from pinned memory. The result is contiguous
    whatever the layout of the input (the loader stacks channels-last, see `loader.collate`).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ConfigError(f"mean and std need 3 values each (std > 0), got mean={mean}, std={std}")
        self.register_buffer("shift", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255)
        self.register_buffer("scale", torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image = image.to(self.shift.device, non_blocking=True)
        return image.to(torch.float32, memory_format=torch.contiguous_format).sub_(self.shift).div_(self.scale)


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float], *, interpolation: str = "bicubic",
                   normalize: bool = True) -> Callable:
    """Resize to size x size with the backbone's kernel `interpolation` (antialiased), then normalise.

    `normalize=False` returns the uint8 image and leaves `Normalize255(mean, std)` to the
    caller, on the accelerator: workers then move a quarter of the bytes (about 2x the
    loader throughput on two CPU cores, see benchmarks/bench_loader.py).
    """
    final = Normalize255(mean, std)
    steps = [T.PILToTensor(), T.Resize((size, size), interpolation=kernel(interpolation), antialias=True)]
    return T.Compose(steps + [final] if normalize else steps)


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
    interpolation: str = "bicubic",
    normalize: bool = True,
) -> Callable:
    """A training augmentation policy (see the module docstring); `interpolation` and `normalize` as
    in `eval_transform`."""
    if policy not in POLICIES:
        raise ConfigError(f"augmentation policy must be one of {POLICIES}, got {policy!r}")
    resample = kernel(interpolation)
    flip = [T.RandomHorizontalFlip()] if hflip else []
    if policy == "multiscale_crop":
        if any(c > scale_size for c in crop_sizes):
            raise ConfigError(f"crop sizes {list(crop_sizes)} must not exceed scale_size {scale_size}")
        steps = [
            T.Resize((scale_size, scale_size), interpolation=resample, antialias=True),
            RandomSizeCrop(crop_sizes),
            T.Resize((size, size), interpolation=resample, antialias=True),
        ]
    else:
        steps = [T.RandomResizedCrop(size, scale=tuple(scale), interpolation=resample, antialias=True)]
        if policy == "randaugment":
            steps.append(T.RandAugment(num_ops=randaugment_ops, magnitude=randaugment_magnitude))
    final = [Normalize255(mean, std)] if normalize else []
    return T.Compose([T.PILToTensor(), *steps, *flip, *final])


def tower_eval_transform(preprocess: "ImagePreprocess", *, normalize: bool = True) -> Callable:
    """`eval_transform` at a tower's size, mean, std and kernel (`backbone.preprocess`)."""
    return eval_transform(preprocess.size, preprocess.mean, preprocess.std, interpolation=preprocess.interpolation,
                          normalize=normalize)


def tower_train_transform(preprocess: "ImagePreprocess", policy: str = "resized_crop", *,
                          normalize: bool = True) -> Callable:
    """`train_transform` (default settings of `policy`) at a tower's size, mean, std and kernel."""
    return train_transform(preprocess.size, preprocess.mean, preprocess.std, policy,
                           interpolation=preprocess.interpolation, normalize=normalize)
