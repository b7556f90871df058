"""ONNX export (issue 24): image -> per-class probabilities with the prompts folded in, checked with
onnxruntime against `predict`'s own probabilities on real image files, for the ViT and ResNet toys."""

import contextlib
import io
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from clipml.cli import export_onnx as export_onnx_cli
from clipml.data.transforms import Normalize255, eval_transform
from clipml.engine.checkpoint import load_model, read_prompt_checkpoint
from clipml.engine.train import train
from clipml.errors import ConfigError, ExportError
from clipml.experiment import load_experiment
from clipml.export import export_onnx, onnx_metadata, run_onnx
from clipml.lab.world import write_synthetic_dataset
from clipml.predictor import Predictor

onnx = pytest.importorskip("onnx")  # the `test` extra installs it; a bare install skips, never fails
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# Trained in one short epoch: a checkpoint with learned prompts, decoupler and thresholds.
FEW_STEPS = ["data.workers=0", "data.batch_size=16", "data.val_fraction=0.25", "data.known_ratio=0.5",
             "data.augment=none", "data.options={num_images: 48}", "model.n_ctx=4", "optim.name=adamw",
             "optim.lr=0.01", "optim.epochs=1", "loss.reduction=mean"]
SETTINGS = {
    # the toy ViT with the decoupler (one text feature per class), at its native 96 px
    "toy-vit-sdm_csp": ["backbone.spec=toy", "model.method=sdm_csp", "model.sdm_csp.decoupler_dim=16"],
    # the toy ResNet (attention pool) with DualCoOp (a positive and a negative text feature; the pool's
    # mean token joins the locations, as the shipped dualcoop configs set), at 96 px
    "toy-rn-dualcoop": ["backbone.spec=toy-rn", "backbone.image_size=96", "model.method=dualcoop",
                        "model.dualcoop.mean_token=true"],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """setting -> its checkpoint, trained once per module."""
    checkpoints = {}

    def checkpoint(setting):
        if setting not in checkpoints:
            tmp = tmp_path_factory.mktemp(setting)
            cfg = load_experiment(None, [*FEW_STEPS, *SETTINGS[setting], f"data.mask_dir={tmp / 'masks'}",
                                         f"output_dir={tmp / 'runs' / '{name}'}", "name=run"])
            train(cfg, resume=False)
            checkpoints[setting] = tmp / "runs" / "run" / "prompts.safetensors"
        return checkpoints[setting]
    return checkpoint


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def exported(request, trained):
    checkpoint = trained(request.param)
    tmp = checkpoint.parent
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # through the tool, as a user exports
        export_onnx_cli(["--checkpoint", str(checkpoint), "--output", str(tmp / "model.onnx")])
    return checkpoint, tmp / "model.onnx", printed.getvalue()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = write_synthetic_dataset(tmp_path_factory.mktemp("images"), {"test": 5}, seed=11, preset="coco_like")
    return sorted((root / "images" / "test").glob("*.jpg"))


def preprocess_as_documented(path, metadata):
    """What a serving user does from the ONNX metadata alone: resize, scale, normalise."""
    prep = metadata["preprocessing"]
    return eval_transform(prep["image_size"], prep["mean"], prep["std"], interpolation=prep["interpolation"])(Image.open(path).convert("RGB")).numpy()


def test_onnx_probabilities_match_predict_on_image_files(exported, images):
    """onnxruntime on the documented preprocessing vs `predict`'s path (uint8 images normalised on
    the device, text encoded by PyTorch): within 1e-4, in one batch and one image at a time."""
    checkpoint, path, printed = exported
    metadata = onnx_metadata(path)
    batch = np.stack([preprocess_as_documented(image, metadata) for image in images])
    found = run_onnx(path, batch)
    model = load_model(str(checkpoint))
    backbone = model.backbone
    # predict's path written out: uint8 pixels, normalised as floats afterwards; the stored Platt
    # scale and bias on the logits (read from the checkpoint, not through clipml's decision rule)
    uint8 = eval_transform(backbone.image_size, backbone.mean, backbone.std, normalize=False)
    pixels = torch.stack([uint8(Image.open(image).convert("RGB")) for image in images])
    stored = read_prompt_checkpoint(checkpoint)[1]["thresholds"]["calibration"]
    with torch.no_grad():
        logits = model(Normalize255(backbone.mean, backbone.std)(pixels)).logits.double()
    expected = torch.sigmoid(stored["scale"] * logits + stored["bias"]).numpy()
    shown = Predictor.from_checkpoint(checkpoint).predict(images, batch_size=2).probabilities
    assert np.abs(shown - expected).max() <= 1e-5  # the oracle is what `predict` shows
    assert found.shape == (len(images), len(model.classnames)) == expected.shape
    assert np.abs(found - expected).max() <= 1e-4
    assert found.std() > 1e-3  # not a constant output that would match anything
    one_by_one = np.concatenate([run_onnx(path, batch[i:i + 1]) for i in range(len(images))])
    assert np.abs(one_by_one - found).max() <= 1e-5  # the batch axis is dynamic
    checked = float(re.search(r"max \|ONNX - PyTorch\| (\S+)", printed).group(1))  # the export's own check
    assert 0 <= checked <= 1e-4


def test_text_features_are_constants_not_the_text_tower(exported):
    """The graph's weights are the image tower, the head and the folded text features: far fewer
    than with the text tower (token embedding alone: 49408 x width)."""
    checkpoint, path, _ = exported
    model = load_model(str(checkpoint))
    proto = onnx.load(str(path))
    weights = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    visual = sum(p.numel() for p in model.backbone.model.visual.parameters())
    with torch.no_grad():
        text = model.text_features()
    folded = sum(t.numel() for t in (text if isinstance(text, tuple) else (text,)))
    head = sum(p.numel() for name, p in model.named_parameters() if not name.startswith(("backbone", "prompts")))
    assert weights <= 1.01 * (visual + folded + head) + 1000
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["probabilities"]


def test_metadata_says_how_to_prepare_images_and_where_to_cut(exported):
    checkpoint, path, printed = exported
    metadata = onnx_metadata(path)
    model = load_model(str(checkpoint))
    backbone = model.backbone
    assert metadata["classes"] == model.classnames
    prep = metadata["preprocessing"]
    assert prep["image_size"] == backbone.image_size == 96
    np.testing.assert_allclose(prep["mean"], backbone.mean)
    np.testing.assert_allclose(prep["std"], backbone.std)
    assert prep["interpolation"] == backbone.interpolation == "bicubic" and prep["resize"].startswith("bicubic ")
    stored = read_prompt_checkpoint(checkpoint)[1]["thresholds"]
    scale, bias = (stored["calibration"][key] for key in ("scale", "bias"))  # the probabilities are calibrated
    for name, probability in metadata["thresholds"].items():
        logit = stored["per_class"].get(name, stored["global"])
        assert probability == pytest.approx(1 / (1 + np.exp(-(scale * logit + bias))), rel=1e-9)
    assert metadata["method"] == model.config.method and "validation" in metadata["threshold_rule"]
    assert f"image [batch, 3, 96, 96] -> probabilities [batch, {len(model.classnames)}]" in printed
    assert "mean [0.48145466, 0.4578275, 0.40821073]" in printed


def test_careless_outputs_and_a_missing_exporter_are_one_error(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        export_onnx_cli(["--checkpoint", str(tmp_path / "prompts.safetensors"), "--output", str(tmp_path / "m.pt")])
    assert "name the exported model *.onnx" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not an ensemble spec"):  # not read as an ensemble by Predictor
        export_onnx(tmp_path / "ensemble.json", tmp_path / "model.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as when not installed
    with pytest.raises(ExportError, match=r"pip install 'clipml\[export\]'"):
        export_onnx(tmp_path / "prompts.safetensors", tmp_path / "model.onnx")


def test_an_export_that_disagrees_with_pytorch_is_refused_and_not_written(trained, tmp_path, monkeypatch):
    import clipml.export

    monkeypatch.setattr(clipml.export, "TOLERANCE", -1.0)  # any difference, even 0, is too large
    with pytest.raises(ExportError, match="differs from PyTorch by .* not written"):
        export_onnx(trained("toy-vit-sdm_csp"), tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []
