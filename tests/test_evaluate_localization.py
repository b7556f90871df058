"""evaluate() reports localisation and mAP breakdowns for splits with object masks, checked
against an independent computation on the model's own attention maps."""

import dataclasses
import math
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from clipml.breakdown import map_by_object_size
from clipml.cli import zero_shot_eval
from clipml.data.base import MultiLabelSplit, ObjectInstance
from clipml.data.transforms import eval_transform
from clipml.engine.cache import build_feature_cache
from clipml.engine.evaluate import detail_summary, detail_table, evaluate, predict
from clipml.engine.features import CachedFeatureSource, ImageFeatureSource
from clipml.model import ModelConfig, MultiLabelCLIP
from data_fixtures import make_coco_with_masks

HEIGHT, WIDTH = 26, 30  # not multiples of the 4 x 4 grid of the tiny ViT at 32 px
COLORS = [(230, 40, 40), (40, 200, 60), (50, 70, 230)]


@dataclasses.dataclass
class PaintedSplit(MultiLabelSplit):
    """Coloured rectangles on noise; its objects are the rectangles. Counts `instances` calls."""

    boxes: Dict[int, List[Tuple[int, int, int, int, int]]] = dataclasses.field(default_factory=dict)
    with_masks: bool = True
    calls: List[int] = dataclasses.field(default_factory=list)

    @property
    def has_instances(self):
        return self.with_masks

    def instances(self, index):
        self.calls.append(index)
        if not self.with_masks:
            return None
        objects = []
        for c, y0, y1, x0, x1 in self.boxes[index]:
            mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
            mask[y0:y1, x0:x1] = True
            objects.append(ObjectInstance(c, mask))
        return objects

    def open_image(self, index):
        pixels = np.random.RandomState(index).randint(0, 256, (HEIGHT, WIDTH, 3)).astype(np.uint8)
        for c, y0, y1, x0, x1 in self.boxes[index]:
            pixels[y0:y1, x0:x1] = COLORS[c]
        return Image.fromarray(pixels, "RGB")
SMALL = {"sdm_csp": {"decoupler_dim": 16}}  # a small decoupler (its own key)


def painted_split(count=14, with_masks=True):
    rng = np.random.RandomState(0)
    boxes, labels = {}, np.zeros((count, 3), dtype=np.int8)
    for i in range(count):
        boxes[i] = []
        for c in rng.choice(3, size=1 + i % 3, replace=False):
            h, w = rng.randint(2, 16), rng.randint(2, 16)
            y0, x0 = rng.randint(0, HEIGHT - h), rng.randint(0, WIDTH - w)
            boxes[i].append((int(c), y0, y0 + h, x0, x0 + w))
            labels[i, c] = 1
    return PaintedSplit("painted", "test", ["red", "green", "blue"], [str(i) for i in range(count)], labels,
                        boxes=boxes, with_masks=with_masks)


@pytest.fixture
def backbone(tiny_backbones):
    return tiny_backbones["open_clip_vit"]


def source_of(split, backbone, batch_size=5):
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std, normalize=False)
    return ImageFeatureSource(split, backbone, transform, batch_size, workers=0)


def model_of(backbone, method, **settings):
    torch.manual_seed(0)
    return MultiLabelCLIP(backbone, ["red", "green", "blue"], ModelConfig.of(method=method, n_ctx=4, **SMALL.get(method, {}),
                                                                          **settings))


def oracle(model, split, backbone):
    """Per-class pointing game and mass inside computed another way: the peak cell's pixel
    box from floor/ceil of its edges, coverage by sub-pixel supersampling."""
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std)
    images = torch.stack([transform(split.open_image(i)) for i in range(len(split))])
    with torch.no_grad():
        dense = backbone.encode_dense(images)
        attention = model.forward_dense(dense).attention.numpy()
    h, w = dense.grid
    hits, mass = [[] for _ in range(3)], [[] for _ in range(3)]
    for i in range(len(split)):
        unions = {}
        for obj in split.instances(i):
            unions[obj.class_index] = unions.get(obj.class_index, False) | obj.mask
        for c, union in unions.items():
            r, q = divmod(int(np.argmax(attention[i, c])), w)
            rows = slice(math.floor(r * HEIGHT / h), math.ceil((r + 1) * HEIGHT / h))
            cols = slice(math.floor(q * WIDTH / w), math.ceil((q + 1) * WIDTH / w))
            hits[c].append(float(union[rows, cols].any()))
            fine = np.repeat(np.repeat(union.astype(float), h, axis=0), w, axis=1)
            coverage = fine.reshape(h, HEIGHT, w, WIDTH).mean(axis=(1, 3)).reshape(-1)
            mass[c].append(float(attention[i, c] @ coverage))
    return [np.mean(x) for x in hits], [np.mean(x) for x in mass]


@pytest.mark.parametrize("method, settings", [("sdm_csp", {}), ("dualcoop", {}),
                                              ("zero_shot", {"scoring": "dense"})])
def test_evaluate_reports_localisation_as_an_independent_computation(backbone, method, settings):
    split = painted_split()
    model = model_of(backbone, method, **settings)
    result = evaluate(model, source_of(split, backbone))
    hits, mass = oracle(model, split, backbone)
    np.testing.assert_allclose(result["pointing_game_per_class"], hits, atol=1e-12)
    np.testing.assert_allclose(result["mass_inside_per_class"], mass, atol=1e-5)
    assert result["pointing_game"] == pytest.approx(np.mean(hits))
    assert result["localization_trials"] == int(split.labels.sum())
    # Sizes from the masks; the breakdowns are those of clipml.breakdown on the same logits.
    logits, labels = predict(model, source_of(split, backbone))
    sizes = np.full(labels.shape, np.nan)
    for i in range(len(split)):
        for obj in split.instances(i):
            sizes[i, obj.class_index] = obj.mask.mean()
    assert result["mAP_by_size"] == map_by_object_size(logits, labels, sizes)["mAP_by_size"]
    assert result["images_by_labels"] == {"1": 5, "2-3": 9, "4+": 0}


def test_models_without_attention_get_the_breakdowns_only(backbone):
    split = painted_split()
    result = evaluate(model_of(backbone, "csc_global"), source_of(split, backbone))
    assert "pointing_game" not in result and "mass_inside" not in result
    assert set(result["mAP_by_size"]) == {"small", "medium", "large"} and "mAP_by_labels" in result


def test_masks_are_read_only_when_localising(backbone):
    model = model_of(backbone, "sdm_csp")
    split = painted_split()
    predict(model, source_of(split, backbone))
    result = evaluate(model, source_of(split, backbone), details=False)
    assert split.calls == [] and "mAP_by_labels" not in result
    plain = painted_split(with_masks=False)
    result = evaluate(model, source_of(plain, backbone))
    assert plain.calls == [] and "mAP_by_size" not in result and "pointing_game" not in result
    assert "mAP_by_labels" in result  # any split has labels per image


def test_cached_features_give_the_same_localisation(backbone, tmp_path):
    split = painted_split()
    model = model_of(backbone, "sdm_csp")
    cache = build_feature_cache(split, backbone, str(tmp_path))
    cached = evaluate(model, CachedFeatureSource(split, cache, 5, "cpu"))
    direct = evaluate(model, source_of(split, backbone))
    assert cached["localization_trials"] == direct["localization_trials"]
    np.testing.assert_allclose(cached["mass_inside_per_class"], direct["mass_inside_per_class"], atol=1e-3)
    assert cached["pointing_game_per_class"] == direct["pointing_game_per_class"]


def test_details_summary_and_table(backbone):
    result = evaluate(model_of(backbone, "sdm_csp"), source_of(painted_split(), backbone))
    details = detail_summary(result)
    assert details["pointing_game"] == round(100 * result["pointing_game"], 3)
    assert details["mAP_by_labels"]["4+"] is None and details["images_by_labels"]["2-3"] == 9
    headers, rows, note = detail_table([("test", details), ("other", {})])
    assert headers[:3] == ["", "pointing game", "mass inside"] and "mAP small" in headers
    assert rows[0][1] == f"{details['pointing_game']:.2f}" and rows[1][1] == "n/a"
    assert "2-3: 9" in note and "small < 2 %" in note
    assert detail_table([("test", {})]) == ([], [], "")


def test_zero_shot_eval_prints_localisation_on_coco(tmp_path, capsys):
    make_coco_with_masks(tmp_path / "coco")
    config = {
        "backbone": {"spec": "open_clip:clipml-tiny-vit", "image_size": 32, "allow_random": True},
        "data": {"dataset": "coco2014", "root": str(tmp_path / "coco"), "test_split": "val", "workers": 0},
    }
    path = tmp_path / "coco.yaml"
    path.write_text(yaml.safe_dump(config))
    zero_shot_eval(["--config", str(path), "--scoring", "dense"])
    out = capsys.readouterr().out
    assert "pointing game" in out and "mass inside" in out and "mAP small" in out
    person = next(line for line in out.splitlines() if line.startswith("person "))
    assert "n/a" not in person  # a trial and a positive: AP, pointing game and mass inside printed


def test_class_map_correlation_on_any_split_for_models_with_attention(backbone):
    """Issue 24: the mean over images of the mean pairwise Pearson correlation of the per-class
    attention maps (numpy's corrcoef on the model's own maps as the oracle); no masks needed."""
    split = painted_split(with_masks=False)
    model = model_of(backbone, "sdm_csp")
    result = evaluate(model, source_of(split, backbone))
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std)
    images = torch.stack([transform(split.open_image(i)) for i in range(len(split))])
    with torch.no_grad():
        attention = model.forward_dense(backbone.encode_dense(images)).attention.double().numpy()
    per_image = [(np.corrcoef(maps).sum() - 3) / 6 for maps in attention]
    assert result["class_map_correlation"] == pytest.approx(np.mean(per_image), abs=1e-4)
    assert detail_summary(result)["class_map_correlation"] == round(result["class_map_correlation"], 4)
    assert "class_map_correlation" not in evaluate(model, source_of(split, backbone), details=False)
    assert "class_map_correlation" not in evaluate(model_of(backbone, "csc_global"), source_of(split, backbone))
