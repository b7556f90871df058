"""Images travel to the device as uint8 and are normalised there: on the CPU the features are those
of the float32-in-worker path bit for bit, and the cache writes batch k only after batch k+1 is
decoded (what lets an accelerator encode while the CPU decodes)."""

import numpy as np
import pytest
import torch

import clipml.engine.cache as cache_module
from clipml.backbones import BackboneConfig, load_backbone
from clipml.data import load_split
from clipml.data.transforms import eval_transform
from clipml.engine.cache import build_feature_cache
from clipml.engine.features import ImageFeatureSource
from clipml.lab.world import write_synthetic_dataset

COUNT = 10


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return load_backbone(BackboneConfig("open_clip:clipml-tiny-vit", image_size=64, allow_random=True))


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """A manifest split of JPEG files (decoded by torchvision on the uint8 path, by PIL before)."""
    folder = tmp_path_factory.mktemp("jpegs")
    write_synthetic_dataset(folder, {"test": COUNT}, image_size=72, quality=90)
    return load_split("manifest", folder, "test")


def float_path(split, backbone, indices):
    """The path before uint8 travel: PIL decode, float32 normalised per image, stacked, encoded."""
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std)
    images = torch.stack([transform(split.open_image(i)) for i in indices])
    with torch.no_grad():
        return backbone.encode_dense(images)


@pytest.mark.parametrize("workers", [0, 1])
def test_image_source_features_equal_the_float_path_bit_for_bit(jpegs, backbone, workers):
    plain = eval_transform(backbone.image_size, backbone.mean, backbone.std, normalize=False)
    source = ImageFeatureSource(jpegs, backbone, plain, batch_size=4, workers=workers)
    seen = []
    for dense, labels, index in source.batches():
        reference = float_path(jpegs, backbone, index.tolist())
        assert torch.equal(dense.tokens, reference.tokens) and torch.equal(dense.pooled, reference.pooled)
        assert torch.equal(labels, torch.from_numpy(jpegs.labels[index.numpy()]))
        seen += index.tolist()
    assert seen == list(range(COUNT))


def test_cache_features_equal_the_float_path_bit_for_bit(tmp_path, jpegs, backbone):
    cache = build_feature_cache(jpegs, backbone, tmp_path, batch_size=4, workers=1, chunk_batches=2)
    for start in range(0, COUNT, 4):  # the extraction's batches: chunks of 8 images, batches of 4
        indices = np.arange(start, min(COUNT, start + 4))
        tokens, pooled = cache.read(indices, np.zeros_like(indices))
        reference = float_path(jpegs, backbone, indices.tolist())
        assert torch.equal(tokens, reference.tokens.half()) and torch.equal(pooled, reference.pooled.half())


def test_cache_writes_batch_k_after_decoding_batch_k_plus_1(tmp_path, jpegs, backbone, monkeypatch):
    events = []
    read_image, write_rows = cache_module.read_image, cache_module._Array.write_rows

    def logged_read(split, index):
        events.append(("decode", index))
        return read_image(split, index)

    def logged_write(array, first_row, values):
        if array.path.name == cache_module.TOKENS:
            events.append(("write", first_row))
        write_rows(array, first_row, values)

    monkeypatch.setattr(cache_module, "read_image", logged_read)
    monkeypatch.setattr(cache_module._Array, "write_rows", logged_write)
    build_feature_cache(jpegs, backbone, tmp_path, batch_size=2, workers=0, chunk_batches=3)

    writes = [row for kind, row in events if kind == "write"]
    assert writes == [0, 2, 4, 6, 8]  # chunks of 6 images: batches 0-1, 2-3, 4-5 | 6-7, 8-9
    for first_row in (0, 2, 6):  # every batch but the last of its chunk
        assert events.index(("decode", first_row + 2)) < events.index(("write", first_row))
    # A chunk is complete on disk before the next one is decoded (progress never runs ahead).
    assert events.index(("write", 4)) < events.index(("decode", 6))
