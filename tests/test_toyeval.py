import numpy as np
import pytest

from clipml.backbones import BackboneConfig, load_backbone
from clipml.lab.toyeval import evaluate_on_preset, linear_probe_map


def test_linear_probe_reads_a_linearly_coded_label_perfectly_and_picks_decay_on_validation():
    rng = np.random.default_rng(0)

    def data(n):
        x = rng.normal(size=(n, 6))
        labels = (x[:, :3] + 0.05 * rng.normal(size=(n, 3)) > 0).astype(np.int8)
        return x, labels

    result = linear_probe_map(data(300), data(100), data(200), weight_decays=(1e-4, 10.0))
    assert result["linear_probe_map"] > 0.97
    assert result["linear_probe_weight_decay"] == 1e-4  # the strong decay flattens the scores


def test_toy_evaluation_reports_every_lab_number(tiny_backbones):
    backbone = load_backbone(BackboneConfig("open_clip:clipml-tiny-vit", allow_random=True))
    result = evaluate_on_preset(backbone, "coco_like", train_images=60, val_images=30, test_images=40)
    for key in ("zero_shot_global_map", "zero_shot_dense_map", "linear_probe_map", "pointing_game", "mass_inside"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["grid"] == [4, 4] and 0 < result["chance"] < 0.2
    assert result["probe_minus_zero_shot"] == pytest.approx(
        result["linear_probe_map"] - result["zero_shot_global_map"], abs=2e-4)
