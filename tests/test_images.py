"""Image decoding (clipml.data.images): 16-bit, palette, alpha, CMYK and greyscale files, EXIF
orientation on the PIL and the torchvision JPEG path, and the size warnings. Every image is
written here; expected pixels come from numpy, not from the decoder under test."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from clipml.data import images
from clipml.data.images import BACKGROUND, ImageDecodeError, decode_image, image_problem, open_image
from clipml.data.loader import read_image
from clipml.data.base import MultiLabelSplit

RNG = np.random.RandomState(0)


def pixels(decoded) -> np.ndarray:
    """[H, W, 3] uint8 of a PIL image or a [3, H, W] tensor."""
    if isinstance(decoded, torch.Tensor):
        return decoded.permute(1, 2, 0).numpy()
    assert decoded.mode == "RGB"
    return np.asarray(decoded)


def grey(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_greyscale_is_scaled_to_8_bits(tmp_path, suffix):
    values = RNG.randint(0, 65536, size=(12, 20)).astype(np.uint16)
    values[0, :4] = [0, 128, 129, 65535]  # round(v / 257): 0, 0, 1, 255
    path = tmp_path / f"deep{suffix}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    expected = grey(np.floor(values / 257 + 0.5).astype(np.uint8))
    assert np.array_equal(pixels(open_image(path)), expected)
    assert expected[0, :4, 0].tolist() == [0, 0, 1, 255]


def test_palette_with_and_without_transparency(tmp_path):
    palette = RNG.randint(0, 256, size=(16, 3)).astype(np.uint8)
    index = RNG.randint(0, 16, size=(10, 14)).astype(np.uint8)
    image = Image.frombytes("P", (14, 10), index.tobytes())
    image.putpalette(palette.flatten().tolist())
    image.save(tmp_path / "plain.png")
    assert np.array_equal(pixels(open_image(tmp_path / "plain.png")), palette[index])
    image.save(tmp_path / "clear.png", transparency=3)
    expected = palette[index].copy()
    expected[index == 3] = BACKGROUND
    assert Image.open(tmp_path / "clear.png").mode == "P" and (index == 3).any()
    assert np.array_equal(pixels(open_image(tmp_path / "clear.png")), expected)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_composited_on_white(tmp_path, mode):
    colour = RNG.randint(0, 256, size=(9, 11, 1 if mode == "LA" else 3)).astype(np.uint8)
    alpha = RNG.randint(0, 256, size=(9, 11, 1)).astype(np.uint8)
    alpha[0, 0], alpha[0, 1] = 0, 255
    Image.fromarray(np.concatenate([colour, alpha], axis=2), mode=None).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode == mode
    a = alpha / 255.0
    expected = np.broadcast_to(colour * a + np.array(BACKGROUND) * (1 - a), (9, 11, 3))
    got = pixels(open_image(tmp_path / "a.png")).astype(float)
    assert np.abs(got - expected).max() <= 1.0
    assert got[0, 0].tolist() == list(BACKGROUND) and got[0, 1].tolist() == np.broadcast_to(colour[0, 1], 3).tolist()


@pytest.mark.parametrize("suffix", [".tif", ".jpg"])
def test_cmyk(tmp_path, suffix):
    cmyk = np.zeros((16, 32, 4), np.uint8)
    cmyk[:, :16] = (200, 30, 0, 50)
    cmyk[:, 16:] = (0, 120, 255, 0)
    Image.frombytes("CMYK", (32, 16), cmyk.tobytes()).save(tmp_path / f"c{suffix}", quality=100)
    expected = (255 - cmyk[..., :3].astype(float)) * (255 - cmyk[..., 3:].astype(float)) / 255
    for decoded in (open_image(tmp_path / f"c{suffix}"), decode_image(tmp_path / f"c{suffix}")):
        assert np.abs(pixels(decoded) - expected).max() <= (1 if suffix == ".tif" else 4)


def test_greyscale_and_one_bit(tmp_path):
    values = RNG.randint(0, 256, size=(8, 8)).astype(np.uint8)
    Image.fromarray(values).save(tmp_path / "l.png")
    Image.fromarray(values > 127).save(tmp_path / "b.png")
    assert np.array_equal(pixels(open_image(tmp_path / "l.png")), grey(values))
    assert np.array_equal(pixels(open_image(tmp_path / "b.png")), grey(np.where(values > 127, 255, 0).astype(np.uint8)))


def displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for stored pixels with an EXIF Orientation tag (the TIFF/EXIF spec)."""
    return {1: lambda s: s, 2: lambda s: s[:, ::-1], 3: lambda s: s[::-1, ::-1], 4: lambda s: s[::-1],
            5: lambda s: s.transpose(1, 0, 2), 6: lambda s: np.rot90(s, -1),
            7: lambda s: np.rot90(s, 2).transpose(1, 0, 2), 8: lambda s: np.rot90(s, 1)}[orientation](stored)


def blocks(height, width) -> np.ndarray:
    """Flat 8x8 blocks of random colours: JPEG keeps them within a few levels at quality 100."""
    return np.kron(RNG.randint(0, 256, size=(height // 8, width // 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_on_both_jpeg_paths_and_png(tmp_path, orientation):
    stored = blocks(32, 48)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "o.jpg", quality=100, subsampling=0, exif=exif)
    Image.fromarray(stored).save(tmp_path / "o.png", exif=exif)
    expected = displayed(stored, orientation).astype(int)
    through_pil = pixels(open_image(tmp_path / "o.jpg"))
    fast = decode_image(tmp_path / "o.jpg")
    assert isinstance(fast, torch.Tensor)  # torchvision's path, orientation applied there
    assert np.array_equal(pixels(fast), through_pil)
    assert through_pil.shape == expected.shape and np.abs(through_pil - expected).max() <= 8
    assert np.array_equal(pixels(open_image(tmp_path / "o.png")), expected)
    split = MultiLabelSplit("mine", "train", ["a"], ["o.jpg", "o.png"], np.ones((2, 1)), root=tmp_path)
    assert np.array_equal(pixels(read_image(split, 0)), through_pil)  # the training loader and cache
    assert np.array_equal(pixels(read_image(split, 1)), expected)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own; clipml logs its own
def test_tiny_and_huge_images_warn_once_and_too_huge_is_a_decode_error(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(images, "_warned", set())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses above twice this
    Image.new("RGB", (1, 1), "red").save(tmp_path / "dot.png")
    Image.new("RGB", (40, 40), "red").save(tmp_path / "big.jpg")
    Image.new("RGB", (50, 50), "red").save(tmp_path / "huge.png")
    with caplog.at_level(logging.WARNING, logger="clipml"):
        assert pixels(open_image(tmp_path / "dot.png")).tolist() == [[[255, 0, 0]]]
        open_image(tmp_path / "dot.png")
        assert pixels(decode_image(tmp_path / "big.jpg")).shape == (40, 40, 3)
        decode_image(tmp_path / "big.jpg")
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == 2, warned
    assert "dot.png is 1x1 pixels" in warned[0]
    assert "big.jpg is 40x40 = 1600 pixels" in warned[1] and "decompression-bomb" in warned[1]
    with pytest.raises(ImageDecodeError, match="huge.png.*exceeds limit"):
        open_image(tmp_path / "huge.png")
    assert "huge.png" in image_problem(tmp_path / "huge.png")


def test_float_images_and_missing_files_are_clear_errors(tmp_path):
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageDecodeError, match="f.tif.*mode F"):
        open_image(tmp_path / "f.tif")
    with pytest.raises(ImageDecodeError, match="f.tif.*mode F"):
        decode_image(tmp_path / "f.tif")
    with pytest.raises(Exception, match="image file not found: .*nothing.png"):
        decode_image(tmp_path / "nothing.png")


def test_predict_scores_a_16_bit_png_and_a_rotated_jpeg_as_their_8_bit_upright_twins(tmp_path):
    """The user-facing path (`predict`'s scoring): a 16-bit PNG scores as its 8-bit equivalent
    (not as a white square), a photo stored sideways with Orientation 6 as the upright photo,
    far from what its stored pixels alone would score."""
    from clipml.engine.inference import find_images
    from clipml.predictor import Predictor

    values = (np.kron(RNG.randint(0, 65536, size=(12, 12)), np.ones((8, 8)))).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    Image.fromarray(np.floor(values / 257 + 0.5).astype(np.uint8)).save(tmp_path / "eight.png")
    upright = blocks(96, 64)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = np.rot90(upright, 1).copy()
    Image.fromarray(stored).save(tmp_path / "sideways.jpg", quality=100, subsampling=0, exif=exif)
    Image.fromarray(stored).save(tmp_path / "stored.jpg", quality=100, subsampling=0)
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=100, subsampling=0)
    predictor = Predictor.zero_shot(["circle", "square", "star", "car", "tree"], backbone="toy")
    scored = predictor.predict(find_images([str(tmp_path)]))
    logits = {path.name: row for path, row in zip(scored.images, scored.log_odds)}
    np.testing.assert_allclose(logits["deep.png"], logits["eight.png"], atol=1e-4)
    rotation_error = np.abs(logits["sideways.jpg"] - logits["upright.jpg"]).max()
    assert rotation_error < 0.1 * np.abs(logits["stored.jpg"] - logits["upright.jpg"]).max()
