"""Feature cache: equal to on-the-fly features, keyed, resumable, corruption detected, and
training from it matches training from images."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clipml.backbones import BackboneConfig, load_backbone
from clipml.data import carve_validation
from clipml.lab.world import SYNTHETIC_CLASSES, synthetic_split
from clipml.data.transforms import eval_transform
from clipml.engine import cache as cache_module
from clipml.engine.cache import (TOKENS, FeatureCache, _ChunkLog, build_feature_cache, cache_key, key_digest,
                                 union_split)
from clipml.engine.features import CachedFeatureSource, ImageFeatureSource
from clipml.engine.train import train
from clipml.errors import ConfigError, DataError
from clipml.model import ModelConfig, MultiLabelCLIP
from test_engine import tiny_config

CLASSES = [name.replace("_", " ") for name in SYNTHETIC_CLASSES]


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(BackboneConfig("open_clip:clipml-tiny-vit", image_size=64, allow_random=True))


@pytest.fixture(scope="module")
def split():
    return synthetic_split("train", num_images=24)


@pytest.fixture(scope="module")
def three_views(tmp_path_factory, backbone, split):
    """A cache with the eval view and two augmented views, in chunks of 8 images."""
    return build_feature_cache(split, backbone, tmp_path_factory.mktemp("views"), views=3, batch_size=8,
                               chunk_batches=1)


def on_the_fly(split, backbone, batch_size=16, shuffle=False):
    plain = eval_transform(backbone.image_size, backbone.mean, backbone.std, normalize=False)
    return ImageFeatureSource(split, backbone, plain, batch_size, workers=0, shuffle=shuffle)


def test_cached_features_and_logits_equal_on_the_fly(three_views, backbone, split):
    cached = CachedFeatureSource(split, three_views, 16, backbone.device)
    model = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="sdm_csp", n_ctx=4, decoupler_dim=16))
    pairs = list(zip(cached.batches(), on_the_fly(split, backbone).batches()))
    assert len(pairs) == len(cached) == 2
    with torch.no_grad():
        for (dense, labels, index), (ref, ref_labels, ref_index) in pairs:
            # Within fp16 rounding: a relative error of at most 2^-11, plus float noise of the encoder.
            torch.testing.assert_close(dense.tokens, ref.tokens, rtol=2 ** -10, atol=1e-4)
            torch.testing.assert_close(dense.pooled, ref.pooled, rtol=2 ** -10, atol=1e-4)
            assert dense.tokens.dtype == torch.float32 and dense.grid == ref.grid
            assert torch.equal(labels, ref_labels) and torch.equal(index, ref_index)
            # Logits are 100 x a cosine: 1e-2 is a cosine error of 1e-4.
            torch.testing.assert_close(model.forward_dense(dense).logits, model.forward_dense(ref).logits,
                                       rtol=1e-3, atol=1e-2)


def test_train_and_val_parts_share_one_cache_in_loader_order(tmp_path, backbone, split):
    fit, val = carve_validation(split, 0.25, seed=3)
    cache = build_feature_cache(union_split(fit, val), backbone, tmp_path, batch_size=8)
    other_fit, other_val = carve_validation(split, 0.5, seed=4)  # another carve reuses the same cache
    assert build_feature_cache(union_split(other_fit, other_val), backbone, tmp_path).path == cache.path
    assert len(list(Path(tmp_path).iterdir())) == 1

    cached = CachedFeatureSource(fit, cache, 8, backbone.device, shuffle=True)
    reference = on_the_fly(fit, backbone, 8, shuffle=True)
    for (dense, labels, index), (ref, ref_labels, ref_index) in zip(cached.batches(seed=11), reference.batches(seed=11)):
        assert torch.equal(index, ref_index)  # the DataLoader's shuffle order
        assert torch.equal(labels, ref_labels)
        torch.testing.assert_close(dense.tokens, ref.tokens, rtol=2 ** -10, atol=1e-4)
    val_batches = list(CachedFeatureSource(val, cache, 64, backbone.device).batches())
    torch.testing.assert_close(val_batches[0][0].pooled, next(on_the_fly(val, backbone, 64).batches())[0].pooled,
                               rtol=2 ** -10, atol=1e-4)


def test_key_changes_with_backbone_size_transform_and_images(backbone, split):
    base = key_digest(cache_key(split, backbone, 2, "resized_crop", 0))
    other_backbone = load_backbone(BackboneConfig("open_clip:clipml-tiny-vit-customtext", image_size=64,
                                                  allow_random=True))
    smaller = load_backbone(BackboneConfig("open_clip:clipml-tiny-vit", image_size=32, allow_random=True))
    reordered = split.subset(np.arange(len(split))[::-1])
    changed = {
        "backbone": cache_key(split, other_backbone, 2, "resized_crop", 0),
        "size": cache_key(split, smaller, 2, "resized_crop", 0),
        "views": cache_key(split, backbone, 3, "resized_crop", 0),
        "policy": cache_key(split, backbone, 2, "randaugment", 0),
        "seed": cache_key(split, backbone, 2, "resized_crop", 1),
        "images": cache_key(split.subset(range(23)), backbone, 2, "resized_crop", 0),
        "order": cache_key(reordered, backbone, 2, "resized_crop", 0),
    }
    digests = {name: key_digest(key) for name, key in changed.items()}
    assert base not in digests.values() and len(set(digests.values())) == len(digests)
    # Without augmented views the policy and seed do not matter.
    assert key_digest(cache_key(split, backbone, 1, "resized_crop", 0)) == \
        key_digest(cache_key(split, backbone, 1, "randaugment", 5))


def test_changed_settings_build_a_new_cache_and_a_wrong_key_is_refused(tmp_path, backbone, split):
    first = build_feature_cache(split, backbone, tmp_path, batch_size=20)
    smaller = load_backbone(BackboneConfig("open_clip:clipml-tiny-vit", image_size=32, allow_random=True))
    second = build_feature_cache(split, smaller, tmp_path, batch_size=20)
    third = build_feature_cache(split.subset(range(20)), backbone, tmp_path, batch_size=20)
    assert len({first.path, second.path, third.path}) == 3
    assert second.meta["tokens"] * 4 == first.meta["tokens"] == 64  # 4x4 vs 8x8 patch grid
    with pytest.raises(DataError, match="another image list"):
        FeatureCache(first.path, split.subset(range(20)))
    meta = json.loads((first.path / "meta.json").read_text())
    meta["key"]["backbone"]["image_size"] = 32
    (first.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="built for another key"):
        build_feature_cache(split, backbone, tmp_path, batch_size=20)


def test_a_cache_of_one_dense_mode_is_never_read_for_another(tmp_path, backbone, split):
    value = load_backbone(BackboneConfig("open_clip:clipml-tiny-vit", image_size=64, allow_random=True, dense="value"))
    tokens_cache = build_feature_cache(split, backbone, tmp_path, batch_size=24)
    value_cache = build_feature_cache(split, value, tmp_path, batch_size=24)
    assert value_cache.path != tokens_cache.path and value_cache.key["backbone"]["dense"] == "value"
    assert key_digest(cache_key(split, value, 1, "none", 0)) != key_digest(cache_key(split, backbone, 1, "none", 0))
    # The value cache holds value-mode features (not the tokens cache's); the global feature is shared.
    (cached, _, _), = CachedFeatureSource(split, value_cache, 24, "cpu").batches()
    (reference, _, _), = on_the_fly(split, value, 24).batches()
    (tokens, _, _), = CachedFeatureSource(split, tokens_cache, 24, "cpu").batches()
    torch.testing.assert_close(cached.tokens, reference.tokens, rtol=2 ** -10, atol=1e-4)
    assert (cached.tokens - tokens.tokens).abs().max() > 1e-2
    torch.testing.assert_close(cached.pooled, tokens.pooled, rtol=2 ** -10, atol=1e-4)
    with pytest.raises(DataError, match="built for another key"):
        FeatureCache(tokens_cache.path, split, cache_key(split, value, 1, "resized_crop", 0))


class _Interrupt(Exception):
    pass


def interrupted_build(split, backbone, folder, chunks):
    """Start a 3-view cache of 8-image chunks under `folder` and stop it after `chunks` chunks."""
    def stop(done, total):
        if done == chunks:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        build_feature_cache(split, backbone, folder, views=3, batch_size=8, chunk_batches=1, on_chunk=stop)


def test_interrupted_build_resumes_with_identical_content(tmp_path, backbone, split, three_views):
    interrupted_build(split, backbone, tmp_path, chunks=4)
    (partial,) = Path(tmp_path).iterdir()
    assert partial.name.endswith(".partial")
    assert json.loads((partial / "meta.json").read_text())["done"] == 4

    seen = []
    resumed = build_feature_cache(split, backbone, tmp_path, views=3, batch_size=8, chunk_batches=1,
                                  on_chunk=lambda done, total: seen.append(done))
    assert seen == list(range(5, 10))  # 3 views x 3 chunks; the first four are not redone
    assert not partial.exists() and resumed.path.name == three_views.path.name
    assert (resumed.path / TOKENS).read_bytes() == (three_views.path / TOKENS).read_bytes()
    assert (resumed.path / "pooled.npy").read_bytes() == (three_views.path / "pooled.npy").read_bytes()
    resumed.verify(full=True)


class _Clock:
    """A stand-in for the `time` module whose clock advances one second per reading."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        self.now += 1.0
        return self.now


def test_a_build_logs_its_progress_and_a_resumed_one_counts_from_where_it_was(tmp_path, backbone, split, caplog,
                                                                                monkeypatch):
    interrupted_build(split, backbone, tmp_path, chunks=2)
    monkeypatch.setattr(cache_module, "time", _Clock())  # one reading at the start, one per logged chunk
    with caplog.at_level("INFO", logger="clipml.engine.cache"):
        build_feature_cache(split, backbone, tmp_path, views=3, batch_size=8, chunk_batches=1)
    progress = [r.getMessage().split(": ", 1)[1] for r in caplog.records if "chunks," in r.getMessage()]
    # 7 chunks of 8 images left after the resume, one logged second each: 8 images/s, 7 - k s left.
    assert progress == [f"{2 + k} of 9 chunks, 8 images/s, {7 - k} s left" for k in range(1, 8)]


@pytest.mark.parametrize("share, logged", [(100, list(range(5, 101, 5))), (30, list(range(2, 31, 2))), (3, [1, 2, 3])])
def test_the_progress_log_writes_about_twenty_lines_and_always_the_last(share, logged, caplog, monkeypatch):
    monkeypatch.setattr(cache_module, "time", _Clock())
    log = _ChunkLog("c", chunk_images=64, done_before=0, share=share)
    with caplog.at_level("INFO", logger="clipml.engine.cache"):
        for done in range(1, share + 1):
            log(done, share)
    assert [int(r.getMessage().split(": ")[1].split(" of ")[0]) for r in caplog.records] == logged


def test_corrupt_truncated_or_unreadable_cache_is_detected(tmp_path, backbone, split):
    cache = build_feature_cache(split, backbone, tmp_path, batch_size=8, chunk_batches=1)
    path = cache.path
    cache.close()
    tokens = path / TOKENS
    data = bytearray(tokens.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the last chunk
    tokens.write_bytes(bytes(data))
    with pytest.raises(DataError, match="chunk 2 .*checksum"):
        FeatureCache(path, split)
    tokens.write_bytes(bytes(data[:-1000]))
    with pytest.raises(DataError, match="truncated"):
        FeatureCache(path, split)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="meta.json"):
        build_feature_cache(split, backbone, tmp_path, batch_size=8, chunk_batches=1)


def test_training_views_differ_across_epochs_deterministically(three_views, backbone, split):
    source = CachedFeatureSource(split, three_views, 16, backbone.device, shuffle=True, random_views=True)
    assert np.array_equal(source.views(5), source.views(5))
    per_epoch = [source.views(epoch) for epoch in range(4)]
    assert all(not np.array_equal(per_epoch[0], other) for other in per_epoch[1:])
    assert set(np.concatenate(per_epoch).tolist()) == {0, 1, 2}
    # Augmented views hold other features than the eval view, and each view is reproducible.
    everything = np.arange(len(split))
    view0, _ = three_views.read(everything, np.zeros(len(split)))
    view1, _ = three_views.read(everything, np.ones(len(split)))
    assert (view0 - view1).abs().amax(dim=(1, 2)).min() > 0
    # A pass yields, for each image, exactly the view that views(seed) names.
    views = source.views(2)
    for dense, _, index in source.batches(seed=2):
        expected, _ = three_views.read(index.numpy(), views[index.numpy()])
        assert torch.equal(dense.tokens, expected.float())
    assert not source.cache.views == 1  # guard: the checks above need several views
    eval_source = CachedFeatureSource(split, three_views, 16, backbone.device)
    assert not eval_source.views(3).any()


def test_resident_cache_reads_like_the_disk(tmp_path, backbone, split):
    cache = build_feature_cache(split, backbone, tmp_path, views=2, batch_size=8)
    images, views = np.array([7, 3, 3, 23, 0]), np.array([1, 0, 1, 1, 0])
    from_disk = cache.read(images, views)
    assert cache.load("cpu")
    resident = cache.read(images, views)
    for a, b in zip(from_disk, resident):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="augment"):
        build_feature_cache(split, backbone, tmp_path, views=2, augment="none")


@pytest.mark.integration
def test_training_from_the_cache_matches_training_from_images(tmp_path):
    # Without augmentation both read the same images in the same order: only fp16 rounding differs.
    overrides = ["data.augment=none", "optim.epochs=2", "data.options={num_images: 64}", "data.known_ratio=0.5",
                 "backbone.image_size=64"]
    plain = train(tiny_config(tmp_path, "name=plain", *overrides), resume=False)
    cache_dir = tmp_path / "features"
    cached = train(tiny_config(tmp_path, "name=cached", "data.cache=true", f"data.cache_dir={cache_dir}",
                               *overrides), resume=False)
    for ours, theirs in zip(cached["history"], plain["history"]):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-3)
    assert abs(plain["val"]["mAP"] - cached["val"]["mAP"]) < 0.5
    assert abs(plain["test"]["mAP"] - cached["test"]["mAP"]) < 0.5
    assert abs(plain["zero_shot_test"]["mAP"] - cached["zero_shot_test"]["mAP"]) < 0.05
    assert len([p for p in cache_dir.iterdir() if p.is_dir()]) == 2  # train+val, test
