import json
import re

import numpy as np
import pytest
from PIL import Image

from clipml.data.base import MultiLabelSplit
from clipml.lab.shapes import draw_object
from clipml.lab.world import (
    SYNTHETIC_CLASSES,
    THEMES,
    SceneGenerator,
    load_synthetic_split,
    synthetic_split,
    write_synthetic_dataset,
)
from clipml.errors import ConfigError, DataError


def test_class_list_and_themes_cover_every_class():
    assert len(SYNTHETIC_CLASSES) >= 20
    assert len(set(SYNTHETIC_CLASSES)) == len(SYNTHETIC_CLASSES)
    themed = {name for members in THEMES.values() for name in members}
    assert themed == set(SYNTHETIC_CLASSES)


def test_same_seed_and_index_render_identically_and_seeds_differ():
    first = SceneGenerator(3, stream="train")
    again = SceneGenerator(3, stream="train")
    for index in (0, 7, 123):
        image_a, labels_a, caption_a = first.render(index)
        image_b, labels_b, caption_b = again.render(index)
        assert np.array_equal(np.asarray(image_a), np.asarray(image_b))
        assert np.array_equal(labels_a, labels_b)
        assert labels_a.dtype == np.int8
        assert caption_a == caption_b
    # rendering out of order gives the same scene: each index has its own random stream
    assert np.array_equal(np.asarray(again.render(7)[0]), np.asarray(first.render(7)[0]))
    other_seed = SceneGenerator(4, stream="train")
    other_stream = SceneGenerator(3, stream="test")
    for other in (other_seed, other_stream):
        assert any(
            not np.array_equal(np.asarray(first.render(i)[0]), np.asarray(other.render(i)[0])) for i in range(3)
        )


def _min_visible(generator, placed):
    cfg = generator.config
    return max(cfg.min_visible_area * cfg.image_size**2, cfg.min_visible_fraction * placed.drawn_pixels)


def test_labels_are_exactly_the_objects_visible_in_the_renderers_own_masks():
    generator = SceneGenerator(0, stream="train")
    for index in range(60):
        scene = generator.scene(index)
        names = [placed.name for placed in scene.objects]
        assert len(names) == len(set(names)) and 1 <= len(names) <= 4
        positives = {SYNTHETIC_CLASSES[c] for c in np.flatnonzero(scene.labels == 1)}
        assert positives == set(names)
        assert set(np.unique(scene.labels)) <= {0, 1}
        assert set(np.unique(scene.owner)) <= set(range(-1, len(names)))
        for k, placed in enumerate(scene.objects):
            visible = int((scene.owner == k).sum())
            assert visible == placed.visible_pixels
            assert visible >= _min_visible(generator, placed)


def test_labels_match_pixels_when_each_object_is_redrawn_alone():
    """Independent oracle: without noise, each labelled object's own colours must show in the image."""
    generator = SceneGenerator(1, stream="val", noise_std=0.0)
    checked = 0
    for index in range(60):
        scene = generator.scene(index)
        pixels = np.asarray(scene.image).astype(np.int16)
        for placed in scene.objects:
            alone = draw_object(placed.name, placed.width, placed.height, placed.seed, placed.flip)
            mask = alone[..., 3] > 0
            assert int(mask.sum()) == placed.drawn_pixels
            window = pixels[placed.top : placed.top + placed.height, placed.left : placed.left + placed.width]
            same = (window == alone[..., :3]).all(-1) & mask
            assert same.sum() >= _min_visible(generator, placed), (index, placed.name)
            checked += 1
    assert checked > 100


def test_caption_names_exactly_the_labelled_classes():
    generator = SceneGenerator(2, stream="train")
    for index in range(40):
        _, labels, caption = generator.render(index)
        mentioned = {name for name in SYNTHETIC_CLASSES if re.search(rf"\b{name}\b", caption)}
        assert mentioned == {SYNTHETIC_CLASSES[c] for c in np.flatnonzero(labels == 1)}
        assert caption.endswith(".")


def test_classes_co_occur_through_themes():
    labels = synthetic_split("train", num_images=1000, seed=0).labels.astype(bool)
    index = {name: i for i, name in enumerate(SYNTHETIC_CLASSES)}
    for a, b in (("boat", "fish"), ("house", "car"), ("cactus", "tent"), ("cup", "clock")):
        p_b = labels[:, index[b]].mean()
        p_b_given_a = labels[labels[:, index[a]], index[b]].mean()
        assert p_b_given_a > 2.5 * p_b, (a, b, p_b_given_a, p_b)
    # and classes of unrelated themes rarely meet
    fish_with_cactus = (labels[:, index["fish"]] & labels[:, index["cactus"]]).mean()
    assert fish_with_cactus < labels[:, index["fish"]].mean() * labels[:, index["cactus"]].mean()
    counts = labels.sum(1)
    assert set(np.unique(counts)) == {1, 2, 3, 4}


def test_split_renders_its_own_scenes_and_splits_are_disjoint():
    train = synthetic_split("train", num_images=12, seed=5)
    test = synthetic_split("test", num_images=12, seed=5)
    assert isinstance(train, MultiLabelSplit) and train.labels.shape == (12, len(SYNTHETIC_CLASSES))
    assert len(set(train.items)) == 12 and not set(train.items) & set(test.items)
    train_pixels = {np.asarray(train.open_image(i)).tobytes() for i in range(12)}
    assert not train_pixels & {np.asarray(test.open_image(i)).tobytes() for i in range(12)}
    generator = SceneGenerator(5, stream="train")
    for i in (0, 11):
        assert np.array_equal(train.labels[i], generator.render(i)[1])
    picked = train.subset([9, 2])
    assert np.array_equal(np.asarray(picked.open_image(0)), np.asarray(train.open_image(9)))
    assert np.array_equal(picked.labels[1], train.labels[2])
    assert picked.caption(0) == train.caption(9)
    assert picked.open_image(0).size == (64, 64)


def test_split_errors_name_the_problem():
    with pytest.raises(ConfigError, match="pretrain"):
        synthetic_split("pretrain", num_images=3)
    with pytest.raises(ConfigError, match="num_images"):
        synthetic_split("train", num_images=0)
    broken = synthetic_split("train", num_images=2)
    broken.items[0] = "not-a-scene"
    with pytest.raises(DataError, match="not-a-scene"):
        broken.open_image(0)


def test_registry_entry_point_returns_a_split():
    data = load_synthetic_split(None, "val", num_images=6, seed=2, image_size=48)
    assert data.dataset == "synthetic" and data.split == "val" and len(data) == 6
    assert data.open_image(3).size == (48, 48)
    assert np.array_equal(data.labels, synthetic_split("val", num_images=6, seed=2, image_size=48).labels)


def test_written_jpeg_dataset_round_trips(tmp_path):
    out = write_synthetic_dataset(tmp_path / "synth", num_images={"train": 6, "test": 4}, seed=1)
    assert (out / "classes.txt").read_text().splitlines() == SYNTHETIC_CLASSES
    assert not (out / "val.jsonl").exists()
    for split, count in (("train", 6), ("test", 4)):
        reference = synthetic_split(split, num_images=count, seed=1)
        lines = (out / f"{split}.jsonl").read_text().splitlines()
        assert len(lines) == count
        for i, line in enumerate(lines):
            record = json.loads(line)
            assert set(record) == {"image", "positive", "negative"}
            assert record["image"] == f"images/{split}/{i:06d}.jpg"
            assert not set(record["positive"]) & set(record["negative"])
            assert sorted(record["positive"] + record["negative"]) == sorted(SYNTHETIC_CLASSES)
            expected = [SYNTHETIC_CLASSES[c] for c in np.flatnonzero(reference.labels[i] == 1)]
            assert record["positive"] == expected
            with Image.open(out / record["image"]) as image:
                assert image.format == "JPEG" and image.size == (64, 64)
                decoded = np.asarray(image.convert("RGB")).astype(np.int16)
            original = np.asarray(reference.open_image(i)).astype(np.int16)
            assert np.abs(decoded - original).mean() < 8  # the same picture, up to JPEG loss


def test_split_serves_the_pixels_rendered_at_load_and_subsets_keep_them():
    from clipml.lab.world import synthetic_split

    split = synthetic_split("val", num_images=6, seed=4)
    part = split.subset([5, 2])
    for position, index in enumerate([5, 2]):
        expected = np.asarray(split.scene(index).image)
        assert np.array_equal(np.asarray(part.open_image(position)), expected)
    assert part.rendered is split.rendered


def test_a_split_asked_for_again_reuses_the_rendering_and_it_cannot_be_changed():
    from clipml.data.partial import partial_split
    from clipml.lab.world import synthetic_split

    first = synthetic_split("val", num_images=5, seed=9)
    second = synthetic_split("val", num_images=5, seed=9)
    assert second.rendered is first.rendered  # rendered once per process
    assert np.array_equal(second.labels, first.labels)
    with pytest.raises(ValueError):
        first.labels[0, 0] = 1 - first.labels[0, 0]
    with pytest.raises(ValueError):
        first.rendered[0][0, 0, 0] = 0
    masked = partial_split(first, 0.5, seed=0)  # derived splits get their own labels
    assert (masked.labels == -1).any() and not masked.labels.flags.writeable  # every dense view is read-only
    assert np.array_equal(synthetic_split("val", num_images=5, seed=9).labels, first.labels)


# --- presets ---------------------------------------------------------------------------------

def _preset_statistics(preset, count=400):
    generator = SceneGenerator(0, stream="train", preset=preset)
    scenes = [generator.scene(i) for i in range(count)]
    labels = np.array([scene.labels.sum() for scene in scenes])
    areas = np.array([instance.area_fraction for scene in scenes for instance in scene.instances()])
    return generator, scenes, labels, areas


def test_coco_like_preset_has_cocos_label_count_and_many_small_objects():
    generator, scenes, labels, areas = _preset_statistics("coco_like")
    assert generator.config.image_size == 96 and len(generator.classes) == 48
    assert abs(labels.mean() - 2.9) < 0.25, labels.mean()  # COCO train2014: 2.9 labels per image
    assert labels.min() >= 1 and labels.max() >= 7
    assert (areas < 0.05).mean() >= 1 / 3, (areas < 0.05).mean()  # many small objects
    assert (areas >= 0.10).mean() > 0.05  # and some large ones
    objects = np.array([len(scene.objects) for scene in scenes])
    assert objects.mean() > labels.mean() + 1  # classes repeat, as COCO's instances do


def test_voc_like_preset_has_vocs_label_count_and_larger_objects():
    _, _, labels, areas = _preset_statistics("voc_like")
    assert abs(labels.mean() - 1.45) < 0.15, labels.mean()  # VOC 2007: 1.4-1.5 labels per image
    assert labels.max() <= 4
    assert np.median(areas) > 0.08 and (areas < 0.05).mean() < 1 / 3


def test_instances_are_the_visible_pixels_of_each_labelled_object():
    generator = SceneGenerator(1, stream="val", preset="coco_like")
    for index in range(20):
        scene = generator.scene(index)
        instances = scene.instances()
        assert len(instances) == len(scene.objects)
        assert {instance.class_index for instance in instances} == set(np.flatnonzero(scene.labels == 1))
        union = np.zeros_like(scene.owner, dtype=bool)
        for instance, placed in zip(instances, scene.objects):
            assert instance.mask.shape == (96, 96) and int(instance.mask.sum()) == placed.visible_pixels
            assert not (union & instance.mask).any()  # one owner per pixel
            union |= instance.mask
        assert np.array_equal(union, scene.owner >= 0)


def test_split_instances_match_the_scene_and_worlds_have_distinct_identities():
    split = synthetic_split("test", num_images=5, seed=2, preset="coco_like")
    assert split.has_instances and split.image_size == 96 and split.num_classes == 48
    for i in range(5):
        fresh = split.scene(i).instances()
        kept = split.instances(i)
        assert [k.class_index for k in kept] == [f.class_index for f in fresh]
        assert all(np.array_equal(k.mask, f.mask) for k, f in zip(kept, fresh))
    voc = synthetic_split("test", num_images=5, seed=2, preset="voc_like")
    small = synthetic_split("test", num_images=5, seed=2, preset="coco_like", image_size=64)
    assert len({split.fingerprint(), voc.fingerprint(), small.fingerprint()}) == 3  # masks and caches never mix
    with pytest.raises(ConfigError, match="preset"):
        synthetic_split("test", num_images=5, preset="coco")


def test_salient_captions_name_large_objects_more_often_and_use_counts():
    from clipml.lab.world import LAB_CLASSES, SYNONYMS, plural

    generator = SceneGenerator(0, stream="pretrain", preset="coco_like")
    named = {"small": [], "medium": [], "large": []}
    counted = 0
    for index in range(300):
        scene = generator.scene(index)
        caption = scene.caption
        for name in {placed.name for placed in scene.objects}:
            words = (name, plural(name), *SYNONYMS.get(name, ()), *map(plural, SYNONYMS.get(name, ())))
            said = any(re.search(rf"\b{re.escape(w)}\b", caption) for w in words)
            area = max(placed.visible_pixels for placed in scene.objects if placed.name == name) / 96**2
            named["small" if area < 0.02 else "large" if area > 0.1 else "medium"].append(said)
        counted += bool(re.search(r"\b(two|three|four|five|many) ", caption))
        largest = max(scene.objects, key=lambda placed: placed.visible_pixels).name
        spoken = (largest, plural(largest), *SYNONYMS.get(largest, ()), *map(plural, SYNONYMS.get(largest, ())))
        assert any(re.search(rf"\b{re.escape(w)}\b", caption) for w in spoken), caption
        assert not {n for n in LAB_CLASSES if re.search(rf"\b({re.escape(n)}|{re.escape(plural(n))})\b", caption)} - {
            p.name for p in scene.objects} - {"tree"}  # only drawn classes ("pine tree" contains "tree")
    assert np.mean(named["large"]) > 0.9 and np.mean(named["small"]) < 0.6
    assert counted > 30
