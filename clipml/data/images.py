"""Opening an image file as the RGB picture a person sees: the one decoder every reader uses
(training and evaluation loaders, the feature cache, `predict`, `visualize_attention`, the
undecodable-image check).

What "as a person sees it" means here:

- EXIF orientation is applied (a phone photo stored sideways with Orientation 6 comes out upright);
- 16-bit greyscale (PNG/TIFF modes ``I;16*`` and 32-bit ``I``, read as 16-bit) is scaled to 8 bits,
  value v -> round(v / 257), where a plain ``convert("RGB")`` clips every value above 255 to white;
- transparency (``RGBA``, ``LA``, ``PA``, premultiplied modes, palette or greyscale images with a
  transparent colour) is composited on a white background (`BACKGROUND`), as a browser shows it
  on a white page; dropping the alpha channel would show whatever colour the hidden pixels hold;
- palette, 1-bit, greyscale, CMYK and YCbCr images are converted by PIL (CMYK: R = (255 - C)(255 - K) / 255);
- floating-point images (mode ``F``) have no agreed range and are refused.

Decoding is strict (a truncated file is an error even where another library set PIL's
LOAD_TRUNCATED_IMAGES). A missing file is a DataError, an undecodable one an ImageDecodeError,
both naming the file. An image with a side under `TINY_SIDE` pixels, or larger than PIL's
decompression-bomb warning size (``PIL.Image.MAX_IMAGE_PIXELS``), is decoded with a warning
naming it (once per file and process); one beyond PIL's hard limit (twice that size) is an
ImageDecodeError: it is skipped where undecodable files are skipped. Raise
``PIL.Image.MAX_IMAGE_PIXELS`` in your own script to read larger files you trust.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from clipml.errors import DataError

logger = logging.getLogger(__name__)

BACKGROUND = (255, 255, 255)  # what transparent pixels are composited on: white
TINY_SIDE = 4  # images with a side shorter than this (in pixels) get a warning
ORIENTATION = 0x0112  # the EXIF tag
JPEG_MAGIC = b"\xff\xd8\xff"
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
FAST_JPEG_MODES = ("RGB", "L", "CMYK")  # JPEGs torchvision decodes to PIL's pixels (tests/test_transforms.py)

# PIL warns about a large image through `warnings` without naming the file (and, by Python's
# default filter, only once per process); clipml logs its own warning naming the file instead.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_warned: set = set()
_warned_lock = threading.Lock()


class ImageDecodeError(DataError):
    """An image file exists but cannot be decoded (damaged, truncated, not an image, too large)."""


Source = Union[str, Path]


def open_image(path: Source) -> Image.Image:
    """The file as an upright RGB PIL image (see the module docstring for what is converted how)."""
    with _opened(path) as image:
        return _decoded(image, path)


def decode_image(path: Source) -> Union[torch.Tensor, Image.Image]:
    """`open_image`, but RGB, greyscale and CMYK JPEGs come as a uint8 tensor [3, H, W] decoded by
    torchvision (libjpeg-turbo: PIL's pixels bit for bit, one copy sooner; benchmarks/results/decode.md),
    EXIF orientation applied there too. The transforms take either form."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except OSError as error:
        raise ImageDecodeError(f"cannot read image {path}: {error}") from None
    if data.startswith(JPEG_MAGIC):
        with _opened(io.BytesIO(data), path) as image:  # the header only: size checks, mode, orientation
            fast = image.format == "JPEG" and image.mode in FAST_JPEG_MODES
            rotated = fast and image.getexif().get(ORIENTATION, 1) != 1
        if fast:
            from torchvision.io import ImageReadMode, decode_jpeg

            try:
                return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                                   apply_exif_orientation=rotated)
            except RuntimeError:
                pass  # truncated or unsupported: PIL decides, and names the file if it fails too
    with _opened(io.BytesIO(data), path) as image:
        return _decoded(image, path)


def image_problem(path: Source) -> Optional[str]:
    """Why the file cannot be decoded, or None. Decoded in full (a truncated JPEG fails) but at
    1/8 scale where the format allows it, which is several times faster."""
    try:
        with _opened(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            _decoded(image, path)
    except DataError as error:
        return str(error)
    return None


@contextlib.contextmanager
def _opened(source, path: Optional[Source] = None) -> Iterator[Image.Image]:
    """PIL's lazy open (the header), strict, with the size checks; errors name `path`."""
    path = source if path is None else path
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        try:
            image = Image.open(source)
        except FileNotFoundError:
            raise DataError(f"image file not found: {path}") from None
        except Image.DecompressionBombError as error:
            raise ImageDecodeError(f"cannot decode image {path}: {error} Resize it, or raise "
                                   f"PIL.Image.MAX_IMAGE_PIXELS in your own script to read it") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise ImageDecodeError(f"cannot decode image {path}: {error}") from None
        with image:
            _check_size(image, path)
            yield image
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _check_size(image: Image.Image, path: Source) -> None:
    width, height = image.size
    limit = Image.MAX_IMAGE_PIXELS
    if min(width, height) < TINY_SIDE:
        _warn_once(path, f"image {path} is {width}x{height} pixels: it holds almost nothing to recognise "
                         f"(the model sees it stretched to its input size)")
    elif limit and width * height > limit:
        _warn_once(path, f"image {path} is {width}x{height} = {width * height} pixels, above PIL's "
                         f"decompression-bomb warning size ({limit}); decoding it takes about "
                         f"{3 * width * height / 2 ** 30:.1f} GiB")


def _warn_once(path: Source, message: str) -> None:
    key = str(path)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message)


def _decoded(image: Image.Image, path: Source) -> Image.Image:
    """Decode the opened image and convert it to upright RGB."""
    try:
        image.load()
        if image.getexif().get(ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageDecodeError(f"cannot decode image {path}: {error}") from None
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"cannot decode image {path}: {error}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "F":
        raise ValueError("floating-point pixels (mode F) have no agreed range; save it as 8 or 16 bit")
    if mode in SIXTEEN_BIT:
        values = np.clip(np.asarray(image, dtype=np.float64), 0, 65535)
        return Image.fromarray(np.rint(values / 257).astype(np.uint8)).convert("RGB")
    if mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


__all__ = ["BACKGROUND", "ImageDecodeError", "TINY_SIDE", "decode_image", "image_problem", "open_image"]
