"""clipml's dualcoop under configs/coco2014/dualcoop.yaml against DualCoOp's own outputs.

tests/golden/dualcoop.npz holds what the reference code (sunxm2357/DualCoOp, and Dassl's
scheduler) computed on fixed inputs: `python benchmarks/parity/dualcoop.py --ref <DualCoOp>
--dassl <TaI-DPT> --write-golden tests/golden/dualcoop.npz` writes it. The same tiny random CLIP
is rebuilt here from its seed (clipml.lab.tiny), so no reference code is needed.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clipml.backbones import load_backbone
from clipml.data.coco import load_coco2014
from clipml.data.voc import load_voc2007
from clipml.engine.train import build_training_loss
from clipml.errors import ConfigError
from clipml.experiment import load_experiment
from clipml.lab.tiny import clipml_backbone, images, tiny_openclip
from clipml.metrics import threshold_metrics
from clipml.methods.dualcoop import DualCoOpConfig
from clipml.model import ModelConfig, MultiLabelCLIP
from conftest import rates_per_step

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = np.load(ROOT / "tests" / "golden" / "dualcoop.npz")
CLASSES = ["person", "bicycle", "car", "dog", "traffic light"]  # as the parity script
SIZE, N_CTX = 448, 4


def experiment(name: str = "coco2014"):
    return load_experiment(str(ROOT / "configs" / name / "dualcoop.yaml"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = tiny_openclip(tmp_path_factory.mktemp("tiny"), seed=0)
    return clipml_backbone(model, SIZE), images(2, SIZE, seed=1)


def run(backbone, images, model_cfg, ctx_pos, ctx_neg):
    """Logits, the loss clipml's training loop minimises, and the context gradients."""
    exp = experiment()
    model = MultiLabelCLIP(backbone, CLASSES, model_cfg)
    with torch.no_grad():
        model.prompts.positive.ctx.copy_(torch.from_numpy(ctx_pos))
        model.prompts.negative.ctx.copy_(torch.from_numpy(ctx_neg))
    labels, unknown = torch.from_numpy(GOLDEN["labels"]), torch.from_numpy(GOLDEN["unknown"])
    out = model(images)
    loss = exp.loss.weight * build_training_loss(exp.loss)(out.logits, (labels == 1).float(), ~unknown)
    loss.backward()
    return out.logits.detach(), loss.detach(), model.prompts.positive.ctx.grad, model.prompts.negative.ctx.grad


def close(actual, expected, atol, rtol=1e-4):
    """Equal within atol + rtol x the largest magnitude (float32 sums in another order)."""
    expected = np.asarray(expected)
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(np.asarray(actual), expected, atol=atol + rtol * scale, rtol=0)


def test_published_config_reproduces_logits_loss_and_gradients(tiny):
    """Mean token in the aggregation (item 1), loss_w 0.03 (2), ASL as the reference's."""
    backbone, images = tiny
    model_cfg = dataclasses.replace(experiment().model, n_ctx=N_CTX)
    logits, loss, grad_pos, grad_neg = run(backbone, images, model_cfg, GOLDEN["ctx_pos"], GOLDEN["ctx_neg"])
    close(logits, GOLDEN["ref_margin"], atol=1e-4, rtol=1e-5)
    close(loss, GOLDEN["ref_loss"], atol=1e-6, rtol=1e-5)
    close(grad_pos, GOLDEN["ref_grad_pos"], atol=1e-7, rtol=1e-5)
    close(grad_neg, GOLDEN["ref_grad_neg"], atol=1e-7, rtol=1e-5)
    # Without the mean token the logits move by ~1e-2: the check above can tell them apart.
    plain = dataclasses.replace(model_cfg, method_options=DualCoOpConfig(mean_token=False))
    logits_plain = run(backbone, images, plain, GOLDEN["ctx_pos"], GOLDEN["ctx_neg"])[0]
    assert np.abs(logits_plain.numpy() - GOLDEN["ref_margin"]).max() > 1e-3


def test_shared_contexts_reproduce_the_reference_without_csc(tiny):
    backbone, images = tiny
    model_cfg = dataclasses.replace(experiment().model, n_ctx=N_CTX,
                                    method_options=DualCoOpConfig(mean_token=True, class_specific=False))
    logits, _, grad_pos, grad_neg = run(backbone, images, model_cfg, GOLDEN["shared_ctx_pos"],
                                        GOLDEN["shared_ctx_neg"])
    close(logits, GOLDEN["shared_ref_margin"], atol=1e-4, rtol=1e-5)
    close(grad_pos, GOLDEN["shared_ref_grad_pos"], atol=1e-7, rtol=1e-5)
    close(grad_neg, GOLDEN["shared_ref_grad_neg"], atol=1e-7, rtol=1e-5)


def test_asl_floor_is_the_references():
    exp = experiment()
    far = torch.from_numpy(GOLDEN["far_logits"]).requires_grad_(True)
    labels = torch.from_numpy(GOLDEN["far_labels"])
    loss = exp.loss.weight * build_training_loss(exp.loss)(far, labels.float(), torch.ones_like(labels, dtype=torch.bool))
    loss.backward()
    close(loss.detach(), GOLDEN["ref_far_loss"], atol=1e-6, rtol=1e-6)
    close(far.grad, GOLDEN["ref_far_grad"], atol=1e-9, rtol=1e-6)


def test_dassl_schedule_matches_dassls_scheduler_epoch_by_epoch():
    expected = GOLDEN["ref_epoch_lr"]
    rates = rates_per_step(experiment().optim, len(expected), steps=3)
    close(rates, np.repeat(expected[:, None], 3, axis=1), atol=1e-12, rtol=1e-9)


def test_cf1_mean_is_dualcoops_cf1():
    metrics = threshold_metrics(GOLDEN["metric_probs"], GOLDEN["metric_truth"])
    assert metrics["CF1_mean"] == pytest.approx(float(GOLDEN["ref_cf1_mean"]), abs=1e-12)
    assert metrics["OF1"] == pytest.approx(float(GOLDEN["ref_of1"]), abs=1e-12)
    assert abs(metrics["CF1"] - metrics["CF1_mean"]) > 1e-4  # the ML-GCN formula stays CF1


def test_coco_images_are_dualcoops(tmp_path):
    instances = json.loads(str(GOLDEN["coco_instances"]))
    instances["categories"] = [{"id": i, "name": f"class {i}"} for i in range(1, 81)]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train2014.json").write_text(json.dumps(instances))
    split = load_coco2014(tmp_path, "train", check_images=False, **experiment().data.options)
    assert [split.image_ids[item] for item in split.items] == GOLDEN["ref_coco_ids"].tolist()
    everything = load_coco2014(tmp_path, "train", check_images=False, image_list="all")
    assert len(everything) == len(instances["images"]) > len(split)  # an unannotated image is kept there
    with pytest.raises(ConfigError, match="image_list"):
        load_coco2014(tmp_path, "train", check_images=False, image_list="some")


def test_voc_difficult_only_classes_are_negatives(tmp_path):
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n")
    (tmp_path / "Annotations" / "000001.xml").write_text(
        "<annotation><object><name>dog</name><difficult>0</difficult></object>"
        "<object><name>cat</name><difficult>1</difficult></object></annotation>")
    split = load_voc2007(tmp_path, "trainval", check_images=False, **experiment("voc2007").data.options)
    assert [int(split.labels[0, split.classes.index("cat")])] == GOLDEN["ref_voc_difficult_only"].tolist()


def test_settings_are_checked_when_read():
    with pytest.raises(ConfigError, match="mean_token"):
        MultiLabelCLIP(load_backbone("toy"), CLASSES, ModelConfig.of(method="dualcoop", n_ctx=2, mean_token=True))
    with pytest.raises(ConfigError, match="model.positivecoop.mean_token needs a ModifiedResNet"):
        MultiLabelCLIP(load_backbone("toy"), CLASSES, ModelConfig.of(method="positivecoop", n_ctx=2, mean_token=True))
    with pytest.raises(ConfigError, match="whole epochs"):
        load_experiment(None, ["optim.schedule=dassl", "optim.warmup_epochs=0.5"])
    with pytest.raises(ConfigError, match="loss.weight"):
        load_experiment(None, ["loss.weight=0"])
