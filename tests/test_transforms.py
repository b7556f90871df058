"""Transforms, the torch Dataset and the DataLoader helper."""

import numpy as np
import pytest
import torch
from PIL import Image

from clipml.data import (
    ImageLabelDataset,
    MultiLabelSplit,
    Normalize255,
    eval_transform,
    make_loader,
    train_transform,
)
from clipml.data.loader import collate, read_image
from clipml.errors import ConfigError, DataError

from data_fixtures import write_jpeg

MEAN, STD = (0.5, 0.25, 0.1), (0.5, 0.25, 0.2)


def test_eval_transform_resizes_and_normalises():
    image = Image.new("RGB", (50, 30), (255, 0, 51))
    x = eval_transform(32, MEAN, STD)(image)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    expected = (torch.tensor([1.0, 0.0, 0.2]) - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(x.mean(dim=(1, 2)), expected, atol=1e-4, rtol=0)


def test_uint8_output_then_batch_normalisation_is_the_same():
    image = Image.fromarray(np.random.RandomState(1).randint(0, 255, (30, 40, 3), dtype=np.uint8))
    raw = eval_transform(16, MEAN, STD, normalize=False)(image)
    assert raw.dtype == torch.uint8 and raw.shape == (3, 16, 16)
    batch = Normalize255(MEAN, STD)(torch.stack([raw, raw]))
    torch.testing.assert_close(batch[1], eval_transform(16, MEAN, STD)(image))
    torch.manual_seed(0)
    a = train_transform(16, MEAN, STD, normalize=False)(image)
    torch.manual_seed(0)
    b = train_transform(16, MEAN, STD)(image)
    torch.testing.assert_close(Normalize255(MEAN, STD)(a), b)


def test_eval_transform_close_to_pil_pipeline():
    """The uint8-tensor path must give what the usual PIL resize + ToTensor + Normalize gives."""
    from torchvision import transforms as T

    yy, xx = np.mgrid[0:75, 0:100]
    pixels = np.stack([xx * 2, yy * 3, (xx + yy) % 256], axis=-1).astype(np.uint8)
    image = Image.fromarray(pixels)
    reference = T.Compose(
        [T.Resize((64, 64), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(), T.Normalize(MEAN, STD)]
    )(image)
    ours = eval_transform(64, MEAN, STD)(image)
    scale = torch.tensor(STD).view(3, 1, 1) * 255  # one grey level, in normalised units
    assert ((ours - reference).abs() / (1 / scale)).mean() < 0.5  # under half a grey level on average
    assert ((ours - reference).abs() / (1 / scale)).max() < 2.0


@pytest.mark.parametrize("policy", ["resized_crop", "multiscale_crop", "randaugment"])
def test_train_policies_shape_and_seeded(policy):
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (60, 80, 3), dtype=np.uint8))
    t = train_transform(32, MEAN, STD, policy, scale_size=64, crop_sizes=(64, 48, 40))
    torch.manual_seed(0)
    a = t(image)
    torch.manual_seed(0)
    b = t(image)
    assert a.shape == (3, 32, 32)
    torch.testing.assert_close(a, b)


def test_transform_bad_options():
    with pytest.raises(ConfigError, match="policy"):
        train_transform(32, MEAN, STD, "mixup")
    with pytest.raises(ConfigError, match="mean and std"):
        eval_transform(32, (0.5,), STD)
    with pytest.raises(ConfigError, match="must not exceed scale_size"):
        train_transform(32, MEAN, STD, "multiscale_crop", scale_size=40, crop_sizes=(48,))


def file_split(tmp_path, n=5):
    items = []
    for i in range(n):
        write_jpeg(tmp_path / f"{i}.jpg", size=(20 + i, 10), color=(10 * i, 0, 0))
        items.append(f"{i}.jpg")
    labels = np.eye(n, 3, dtype=np.int8)
    labels[0, 2] = -1
    return MultiLabelSplit("toy", "train", ["a", "b", "c"], items, labels, tmp_path)


def test_image_label_dataset_and_loader(tmp_path):
    split = file_split(tmp_path)
    dataset = ImageLabelDataset(split, eval_transform(16, MEAN, STD))
    image, labels, index = dataset[0]
    assert image.shape == (3, 16, 16) and labels.dtype == torch.int8 and index == 0
    assert labels.tolist() == [1, 0, -1]
    loader = make_loader(split, eval_transform(16, MEAN, STD), batch_size=2, workers=0)
    batches = list(loader)
    assert [len(b[2]) for b in batches] == [2, 2, 1]  # nothing dropped at evaluation
    assert torch.cat([b[2] for b in batches]).tolist() == list(range(5))
    torch.testing.assert_close(torch.cat([b[1] for b in batches]), torch.from_numpy(split.labels.copy()))
    shuffled = make_loader(split, eval_transform(16, MEAN, STD), batch_size=5, workers=0, shuffle=True, seed=3)
    again = make_loader(split, eval_transform(16, MEAN, STD), batch_size=5, workers=0, shuffle=True, seed=3)
    assert next(iter(shuffled))[2].tolist() == next(iter(again))[2].tolist()


def test_in_memory_split_works():
    class Rendered(MultiLabelSplit):
        def open_image(self, index):
            return Image.new("RGB", (12, 12), (index * 40, 0, 0))

    split = Rendered("mem", "train", ["a"], ["x", "y"], np.array([[1], [0]]))
    image, labels, index = ImageLabelDataset(split, eval_transform(8, MEAN, STD))[1]
    assert image.shape == (3, 8, 8) and labels.tolist() == [0] and index == 1


def test_corrupt_truncated_and_missing_images(tmp_path):
    split = file_split(tmp_path)
    data = (tmp_path / "1.jpg").read_bytes()
    (tmp_path / "1.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (tmp_path / "2.jpg").write_bytes(b"this is not a jpeg")  # corrupt
    (tmp_path / "3.jpg").unlink()  # missing after loading
    dataset = ImageLabelDataset(split, eval_transform(16, MEAN, STD))
    with pytest.raises(DataError, match="cannot decode image .*1.jpg"):
        dataset[1]
    with pytest.raises(DataError, match="cannot decode image .*2.jpg"):
        dataset[2]
    with pytest.raises(DataError, match="image file not found: .*3.jpg"):
        dataset[3]


def test_read_image_gives_pil_pixels_for_every_jpeg_kind(tmp_path):
    """torchvision decodes JPEG files (to a tensor) with PIL's pixels bit for bit; other formats
    and in-memory splits go through open_image."""
    yy, xx = np.mgrid[0:37, 0:53]
    noise = np.random.RandomState(0).randint(0, 60, (37, 53, 3))
    image = Image.fromarray((np.stack([xx * 4, yy * 6, xx + yy], axis=-1) + noise).clip(0, 255).astype(np.uint8))
    kinds = {
        "420.jpg": (image, dict(quality=90)),
        "444.jpg": (image, dict(quality=90, subsampling=0)),
        "progressive.jpg": (image, dict(quality=75, progressive=True)),
        "grey.jpg": (image.convert("L"), dict(quality=90)),
        "cmyk.jpg": (image.convert("CMYK"), dict(quality=90)),
        "lossless.png": (image, dict()),
        "png-named.jpg": (image, dict(format="PNG")),
    }
    for name, (picture, options) in kinds.items():
        picture.save(tmp_path / name, **options)
    split = MultiLabelSplit("kinds", "test", ["a"], list(kinds), np.zeros((len(kinds), 1)), tmp_path)
    for index, name in enumerate(kinds):
        pixels = read_image(split, index)
        reference = np.asarray(split.open_image(index))
        if name.endswith(".png") or name == "png-named.jpg":
            assert isinstance(pixels, Image.Image), name
            pixels = torch.from_numpy(np.asarray(pixels).copy()).permute(2, 0, 1)
        else:
            assert isinstance(pixels, torch.Tensor) and pixels.dtype == torch.uint8, name
        assert torch.equal(pixels, torch.from_numpy(reference.copy()).permute(2, 0, 1)), name
        transform = eval_transform(16, MEAN, STD)
        assert torch.equal(transform(read_image(split, index)), transform(split.open_image(index))), name


def test_collate_stacks_channels_last_pixels_without_changing_the_batch():
    """Resized uint8 images lie channels-last in memory; the batch keeps that layout (a plain copy),
    holds the same values as the default stack, and normalises to the same contiguous floats."""
    from torch.utils.data import default_collate

    rng = np.random.RandomState(2)
    transform = eval_transform(16, MEAN, STD, normalize=False)
    images = [transform(Image.fromarray(rng.randint(0, 255, (20 + i, 30, 3), dtype=np.uint8))) for i in range(3)]
    assert all(image.permute(1, 2, 0).is_contiguous() for image in images)
    items = [(image, torch.tensor([1, 0], dtype=torch.int8), i) for i, image in enumerate(images)]
    batch, labels, index = collate(items)
    reference = default_collate(items)
    assert batch.shape == (3, 3, 16, 16) and batch.permute(0, 2, 3, 1).is_contiguous()
    assert torch.equal(batch, reference[0]) and torch.equal(labels, reference[1]) and torch.equal(index, reference[2])
    normalised = Normalize255(MEAN, STD)(batch)
    assert normalised.is_contiguous() and torch.equal(normalised, Normalize255(MEAN, STD)(reference[0]))
    mixed = [images[0], images[1].contiguous()]  # one image in the default layout: the default stack
    assert collate(mixed).is_contiguous() and torch.equal(collate(mixed), torch.stack(mixed))
