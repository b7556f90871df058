"""clipml's taidpt under the published-setting configs (configs/*/taidpt.yaml) against TaI-DPT's
own code (guozix/TaI-DPT), through golden values that benchmarks/parity/taidpt.py --write-golden
wrote from the reference: image scores (no positional embedding in the attention pool), the
evaluator's AP, the class prompts added to the captions; and the published mask files' format.
The inputs are regenerated here from the stored seed; the reference is never needed."""

import copy
import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from clipml.errors import DataError
from clipml.experiment import load_experiment
from clipml.lab.tiny import TINY_NAME, images, tiny_openclip

REPO = Path(__file__).resolve().parent.parent
GOLDEN = json.loads((REPO / "tests" / "golden" / "taidpt.json").read_text())
CONFIGS = [REPO / "configs" / dataset / "taidpt.yaml" for dataset in ("coco2014", "voc2007")]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return tiny_openclip(tmp_path_factory.mktemp("tiny"), GOLDEN["seed"])


def image_scores(open_clip_model, config):
    """clipml's taidpt logits (global, local, merged) of the golden images with the reference's
    contexts, on the tiny CLIP with the config's image features and scales."""
    from clipml.backbones import BackboneConfig
    from clipml.backbones.open_clip import OpenCLIPBackbone
    from clipml.model import ModelConfig, MultiLabelCLIP

    backbone = OpenCLIPBackbone(copy.deepcopy(open_clip_model), TINY_NAME, "random",
                                BackboneConfig(image_size=224, attnpool_positional=config.backbone.attnpool_positional))
    model = MultiLabelCLIP(backbone, GOLDEN["classes"], dataclasses.replace(config.model, n_ctx=GOLDEN["n_ctx"]))
    with torch.no_grad():
        model.prompts.global_context.ctx.copy_(torch.tensor(GOLDEN["global_ctx"]))
        model.prompts.local_context.ctx.copy_(torch.tensor(GOLDEN["local_ctx"]))
        out = model(images(2, 224, seed=GOLDEN["seed"] + 1))
    return out.parts[0], out.parts[1], out.logits


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_image_scores_equal_the_reference(tiny_clip, path):
    """Item 9: the reference scores images with attnpool(if_pos=False) and the raw layer-4 map."""
    config = load_experiment(str(path))
    assert config.backbone.attnpool_positional is False
    for ours, key in zip(image_scores(tiny_clip, config), ("image_global", "image_local", "image_score")):
        torch.testing.assert_close(ours, torch.tensor(GOLDEN[key]), atol=1e-4, rtol=1e-4)
    # CLIP's own pool (clipml's default) scores differently: the golden values tell them apart.
    positional = dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, attnpool_positional=True))
    assert not torch.allclose(image_scores(tiny_clip, positional)[2], torch.tensor(GOLDEN["image_score"]), atol=1e-3)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_map_equals_the_reference_evaluator(path):
    """Item 10: the reference's Dassl evaluator (non-interpolated AP) on its stored test matrix."""
    from clipml.metrics import mean_average_precision

    spec = GOLDEN["map"]
    rng = np.random.RandomState(spec["seed"])
    truth = (rng.rand(spec["images"], spec["classes"]) < 0.2).astype(np.int64)
    truth[0] = 1
    scores = rng.randn(spec["images"], spec["classes"]) * 2 + truth * 1.5
    config = load_experiment(str(path))
    assert mean_average_precision(scores, truth, config.eval.ap) == pytest.approx(spec["reference"], rel=1e-9)
    assert abs(mean_average_precision(scores, truth, "envelope") - spec["reference"]) > 1e-3  # the old setting


def test_voc_config_reads_difficult_only_classes_as_negative():
    """The reference evaluates VOC with the devkit's 0 (difficult only) labels as negatives."""
    assert load_experiment(str(CONFIGS[1])).data.options == {"difficult": "negative"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_class_prompts_equal_the_reference(path, tmp_path):
    """Item 11: per class, 'a photo of a {}.' 9 times plus CLIP's 80 ImageNet templates (which
    hold it once more), each a training prompt labelled with its class alone."""
    from clipml.data.captions import load_captions

    classes = GOLDEN["classes"]
    source = tmp_path / "captions.txt"
    source.write_text("a dog on a bicycle\n")
    config = load_experiment(str(path)).data.captions
    captions = load_captions(dataclasses.replace(config, source=str(source), synonyms=None), "parity", classes, classes)
    assert captions.labels[0].tolist() == [int(name in ("dog", "bicycle")) for name in classes]
    added = {name: Counter() for name in classes}
    for text, row in zip(captions.captions[1:], captions.labels[1:]):
        (index,) = np.flatnonzero(row)
        added[classes[index]][text] += 1
    for name, reference in GOLDEN["class_prompts"].items():
        assert added[name] == Counter(reference)
        assert added[name][f"a photo of a {name}."] == 10 and sum(added[name].values()) == 89
    assert all(sum(counts.values()) == 89 for counts in added.values())


# Item 13: the published partial-label files as they ship -----------------------------------------
def _split(rows):
    from clipml.data.base import MultiLabelSplit

    labels = np.asarray(rows, dtype=np.int8)
    return MultiLabelSplit("toy", "train", [f"c{j}" for j in range(labels.shape[1])],
                           [f"{i:06d}" for i in range(len(labels))], labels)


FULL = [[1, 0, 0, 1], [0, 0, 1, 0], [1, 1, 0, 0]]
PUBLISHED = "0,-1,0,1\n-1,0,0,-1\n1,0,-1,0\n"  # train_proportion_*.txt: pm1 codes, commas, '\n' after each row


@pytest.mark.parametrize("text", [PUBLISHED, PUBLISHED.replace(",", " "), PUBLISHED.replace(",", ", ")],
                         ids=["commas", "spaces", "comma-space"])
def test_import_mask_reads_the_published_text_format(tmp_path, text):
    from clipml.data.partial import import_mask

    path = tmp_path / "train_proportion_0.5.txt"
    path.write_text(text)
    imported = import_mask(path, _split(FULL), convention="pm1")
    assert imported.labels.tolist() == [[-1, 0, -1, 1], [0, -1, -1, 0], [1, -1, 0, -1]]


def test_import_mask_names_each_malformed_line(tmp_path):
    from clipml.data.partial import import_mask

    path = tmp_path / "train_proportion_0.5.txt"
    path.write_text("0,-1,0,1\n-1,0,0\n1,,-1,0\n1,0,x,0\n")
    with pytest.raises(DataError) as error:
        import_mask(path, _split(FULL + [[0, 0, 0, 0]]), convention="pm1")
    message = str(error.value)
    assert str(path) in message and "3 malformed line(s)" in message
    assert "line 2: 3 values, expected 4" in message and "line 3: an empty field" in message
    assert "line 4: 'x' is not a number" in message


# Item 9 in ensembles: a TaI-DPT member keeps its own image features --------------------------------
@pytest.fixture(scope="module")
def rn_members(tmp_path_factory):
    """A TaI-DPT checkpoint saved under backbone.attnpool_positional=false and a CoOp one under
    CLIP's pool, both on the tiny ResNet CLIP (contexts perturbed, no training needed)."""
    from clipml.config import config_to_dict, load_config
    from clipml.data import readable_names
    from clipml.engine.builders import build_backbone, build_splits
    from clipml.engine.checkpoint import save_prompt_checkpoint
    from clipml.experiment import ExperimentConfig
    from clipml.model import MultiLabelCLIP

    tmp = tmp_path_factory.mktemp("rn_members")
    base = ["backbone.spec=open_clip:clipml-tiny-rn", "backbone.allow_random=true", "data.options={num_images: 48}",
            f"data.mask_dir={tmp / 'masks'}", "data.workers=0", "data.val_fraction=0.25", "data.known_ratio=0.5",
            "model.n_ctx=2"]
    paths, configs = {}, {}
    for method, extra in (("taidpt", ["backbone.attnpool_positional=false"]), ("coop", [])):
        cfg = load_config(ExperimentConfig, None, base + [f"model.method={method}"] + extra)
        torch.manual_seed(3)
        model = MultiLabelCLIP(build_backbone(cfg), readable_names(build_splits(cfg)[0]), cfg.model)
        with torch.no_grad():
            for parameter in model.trainable_parameters():
                parameter.add_(torch.randn_like(parameter))
        paths[method] = str(save_prompt_checkpoint(tmp / f"{method}.safetensors", model, config_to_dict(cfg)))
        configs[method] = cfg
    return configs, paths


def _position_free(backbone):
    """open_clip's own attention pool with its positional embedding zeroed, and the layer-4 map
    through its value and output projections: TaI-DPT's test-time features, computed apart."""
    from clipml.backbones import Dense

    pool = backbone.model.visual.attnpool

    def encode_dense(images):
        fmap = backbone.resnet_feature_map(images)
        saved = pool.positional_embedding.data.clone()
        pool.positional_embedding.data.zero_()
        try:
            pooled = pool(fmap)
        finally:
            pool.positional_embedding.data.copy_(saved)
        return Dense(tokens=pool.c_proj(pool.v_proj(fmap.flatten(2).transpose(1, 2))), pooled=pooled,
                     grid=backbone.grid)
    return encode_dense


def test_ensembles_score_a_taidpt_member_as_it_scores_alone(rn_members, monkeypatch):
    from clipml.backbones import BackboneConfig, load_backbone
    from clipml.data.transforms import eval_transform
    from clipml.engine.builders import build_splits
    from clipml.engine.ensemble import evaluate_ensemble, load_members
    from clipml.engine.evaluate import predict
    from clipml.engine.features import ImageFeatureSource
    from clipml.engine.checkpoint import load_model
    from clipml.metrics import mean_average_precision

    configs, paths = rn_members
    members = load_members([paths["taidpt"], paths["coop"]], None, "cpu")
    assert members[0].backbone.attnpool_positional is False and members[1].backbone.attnpool_positional is True
    from clipml.predictor import Predictor

    assert Predictor.from_checkpoint(paths["taidpt"]).model.backbone.identity["attnpool_positional"] is False

    result = evaluate_ensemble(configs["coop"], [paths["taidpt"], paths["coop"]], memo={})
    _, _, test = build_splits(configs["coop"])

    def scores(path, position_free):
        backbone = load_backbone(BackboneConfig(spec="open_clip:clipml-tiny-rn", allow_random=True))
        if position_free:
            monkeypatch.setattr(backbone, "encode_dense", _position_free(backbone))
        source = ImageFeatureSource(test, backbone, eval_transform(backbone.image_size, backbone.mean, backbone.std,
                                                                   normalize=False), 64, 0)
        return predict(load_model(path, backbone=backbone), source)[0]

    taidpt, coop = scores(paths["taidpt"], True), scores(paths["coop"], False)
    assert result.member_metrics[0]["mAP"] == pytest.approx(mean_average_precision(taidpt, test.labels), abs=1e-9)
    assert result.member_metrics[1]["mAP"] == pytest.approx(mean_average_precision(coop, test.labels), abs=1e-9)
    assert result.metrics["mAP"] == pytest.approx(
        mean_average_precision(result.ensemble.combine([taidpt, coop]), test.labels), abs=1e-9)
    # CLIP's pool would have scored the TaI-DPT member differently.
    assert not np.allclose(scores(paths["taidpt"], False), taidpt, atol=1e-3)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_learning_rate_per_epoch_is_the_references(path):
    """Item 12: the published configs step Dassl's schedule (constant warm-up epoch, cosine per
    epoch), read from TaI-DPT's own scheduler epoch by epoch."""
    from conftest import rates_per_step

    expected = np.asarray(GOLDEN["ref_epoch_lr"])
    optim = load_experiment(str(path)).optim
    assert optim.epochs == len(expected)
    np.testing.assert_allclose(rates_per_step(optim, optim.epochs, steps=3), np.repeat(expected[:, None], 3, axis=1),
                               rtol=1e-9, atol=1e-12)
