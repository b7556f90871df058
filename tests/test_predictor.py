"""clipml.Predictor, the library behind predict and visualize_attention: the same numbers as the
tools, against independent oracles (the model's own logits, the ensemble formula, the tower's
zero-shot rule), on a checkpoint trained in a tiny run."""

import contextlib
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from clipml import Predictor
from clipml.cli import predict, train_prompts
from clipml.data.transforms import eval_transform
from clipml.engine.checkpoint import load_model, read_prompt_checkpoint
from clipml.engine.inference import checkpoint_calibration
from clipml.ensemble import Calibration, Ensemble, EnsembleMember, file_digest
from clipml.errors import ConfigError, DataError
from clipml.lab.world import write_synthetic_dataset

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny sdm_csp run (one epoch on 64 images) and five image files of its world."""
    tmp = tmp_path_factory.mktemp("predictor")
    config = {
        "name": "tiny", "output_dir": str(tmp / "runs" / "{name}"),
        "backbone": {"spec": "open_clip:clipml-tiny-vit", "image_size": 32, "allow_random": True},
        "data": {"options": {"num_images": 64}, "mask_dir": str(tmp / "masks"), "workers": 0, "batch_size": 16,
                 "val_fraction": 0.25},
        "model": {"n_ctx": 4, "sdm_csp": {"decoupler_dim": 16}},
        "optim": {"name": "adamw", "lr": 0.01, "epochs": 1},
    }
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(config))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        train_prompts(["--config", str(tmp / "tiny.yaml"), "--no-resume"])
    write_synthetic_dataset(tmp / "world", {"test": 5}, seed=3)
    images = sorted((tmp / "world" / "images").rglob("*.jpg"))
    return tmp / "runs" / "tiny" / "prompts.safetensors", images


def _tool_output(arguments, path):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        predict([*arguments, "--output", str(path)])
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return list(csv.reader(path.open()))


def _model_log_odds(checkpoint, images):
    """The oracle: the checkpoint's model on float32 normalised images, then its stored calibration."""
    model = load_model(str(checkpoint))
    backbone = model.backbone
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std)
    pixels = torch.stack([transform(Image.open(path).convert("RGB")) for path in images])
    with torch.no_grad():
        logits = model(pixels).logits.double().numpy()
    return checkpoint_calibration(read_prompt_checkpoint(checkpoint)[1])[0].apply(logits)


def test_predictor_gives_what_predict_writes(trained, tmp_path):
    checkpoint, images = trained
    predictor = Predictor.from_checkpoint(checkpoint)
    result = predictor.predict(images)
    assert result.images == images and result.classnames == predictor.classnames
    np.testing.assert_allclose(result.log_odds, _model_log_odds(checkpoint, images), atol=1e-4)

    records = _tool_output(["--checkpoint", str(checkpoint), *map(str, images)], tmp_path / "p.json")
    assert [r["image"] for r in records] == [str(p) for p in images]
    assert [r["labels"] for r in records] == result.labels
    written = np.array([[r["probabilities"][c] for c in result.classnames] for r in records])
    np.testing.assert_array_equal(written, result.probabilities.round(5))

    rows = _tool_output(["--checkpoint", str(checkpoint), *map(str, images), "--threshold", "0.3", "--top-k", "2"],
                        tmp_path / "p.csv")
    overridden = predictor.predict(images, threshold=0.3, top_k=2)
    assert rows[0] == ["image", "labels", *result.classnames]
    assert [row[1].split(";") if row[1] else [] for row in rows[1:]] == overridden.labels
    assert [[float(x) for x in row[2:]] for row in rows[1:]] == \
        [[float(f"{p:.5f}") for p in probs] for probs in overridden.probabilities]


def test_labels_follow_the_thresholds_and_top_k(trained):
    checkpoint, images = trained
    predictor = Predictor.from_checkpoint(checkpoint)
    result = predictor.predict(images, threshold=0.0, top_k=3)
    for row, log_odds in zip(result.labels, result.log_odds):  # exactly the 3 most probable
        assert row == [predictor.classnames[c] for c in np.argsort(-log_odds, kind="stable")[:3]]
    stored = predictor.predict(images)
    for row, log_odds in zip(stored.labels, stored.log_odds):
        assert set(row) == {c for c, v, t in zip(predictor.classnames, log_odds, predictor.thresholds) if v >= t}
    assert predictor.predict(images, threshold=1.0).labels == [[] for _ in images]
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        predictor.predict(images, threshold=1.5)


def test_images_paths_and_tensors_score_alike(trained):
    checkpoint, images = trained
    predictor = Predictor.from_checkpoint(checkpoint)
    from_paths = predictor.predict(images).log_odds
    pil = [Image.open(path) for path in images]
    from_pil = predictor.predict(pil)
    assert from_pil.images == list(range(len(images)))
    np.testing.assert_array_equal(from_pil.log_odds, from_paths)
    backbone = predictor.model.backbone
    uint8 = torch.stack([eval_transform(backbone.image_size, backbone.mean, backbone.std, normalize=False)(image)
                         for image in pil])
    np.testing.assert_allclose(predictor.predict(uint8).log_odds, from_paths, atol=1e-6)
    normalised = torch.stack([eval_transform(backbone.image_size, backbone.mean, backbone.std)(image)
                              for image in pil])
    np.testing.assert_allclose(predictor.predict(normalised).log_odds, from_paths, atol=1e-4)
    np.testing.assert_array_equal(predictor.predict(images[0]).log_odds, from_paths[:1])
    with pytest.raises(DataError, match=r"\[B, 3, 32, 32\]"):
        predictor.predict(torch.zeros(2, 3, 16, 16))


def test_unreadable_files_raise_or_are_skipped(trained, tmp_path):
    checkpoint, images = trained
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    predictor = Predictor.from_checkpoint(checkpoint)
    with pytest.raises(DataError, match="broken.jpg"):
        predictor.predict([images[0], broken])
    result = predictor.predict([images[0], broken, images[1]], skip_unreadable=True)
    assert result.images == [images[0], images[1]] and [p for p, _ in result.skipped] == [broken]


def test_the_checkpoint_is_read_once(trained, monkeypatch):
    from clipml.engine import checkpoint as checkpoint_module

    reads = []
    original = checkpoint_module.load_file
    monkeypatch.setattr(checkpoint_module, "load_file", lambda *a, **k: reads.append(a) or original(*a, **k))
    Predictor.from_checkpoint(trained[0])
    assert len(reads) == 1


def test_zero_shot_predictor_is_predicts_zero_shot_path(trained, tmp_path):
    _, images = trained
    classes = ["sun", "moon", "tree", "boat"]
    predictor = Predictor.zero_shot(classes, backbone="toy")
    result = predictor.predict(images, threshold=0.2)
    records = _tool_output(["--classes", ",".join(classes), "--backbone", "toy", "--threshold", "0.2",
                            *map(str, images)], tmp_path / "z.json")
    assert [r["labels"] for r in records] == result.labels
    np.testing.assert_array_equal([[r["probabilities"][c] for c in classes] for r in records],
                                  result.probabilities.round(5))
    # The tower's rule (CLIP: a softmax over the classes), on the model's own logits.
    model = predictor.model
    transform = eval_transform(model.backbone.image_size, model.backbone.mean, model.backbone.std)
    with torch.no_grad():
        logits = model(torch.stack([transform(Image.open(p).convert("RGB")) for p in images])).logits
    np.testing.assert_allclose(result.probabilities, torch.softmax(logits.double(), dim=-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-6)
    with pytest.raises(ConfigError, match="distinct"):
        Predictor.zero_shot(["cat", "cat"])


def test_zero_shot_takes_a_backbone_config_for_the_tiny_sigmoid_towers(trained):
    """A BackboneConfig reaches towers a spec alone cannot (allow_random: the tiny SigLIP 2); its
    probabilities are the tower's sigmoids, not a softmax."""
    from clipml.backbones import BackboneConfig
    from clipml.errors import BackboneError

    _, images = trained
    with pytest.raises(BackboneError, match="a tiny test model: backbone.allow_random=true"):
        Predictor.zero_shot(["sun", "moon"], backbone="open_clip:clipml-tiny-siglip2")
    torch.manual_seed(0)
    predictor = Predictor.zero_shot(["sun", "moon"], backbone=BackboneConfig("open_clip:clipml-tiny-siglip2",
                                                                             allow_random=True))
    model = predictor.model
    assert model.backbone.zero_shot_rule == "sigmoid"
    size = model.backbone.image_size
    transform = eval_transform(size, model.backbone.mean, model.backbone.std)
    with torch.no_grad():
        logits = model(torch.stack([transform(Image.open(p).convert("RGB")) for p in images])).logits
    np.testing.assert_allclose(predictor.predict(images).probabilities, torch.sigmoid(logits.double()).numpy(),
                               atol=1e-5)


def test_attention_maps_of_the_top_classes(trained):
    checkpoint, images = trained
    predictor = Predictor.from_checkpoint(checkpoint)
    image = Image.open(images[0]).convert("RGB").resize((40, 24))
    maps = predictor.attention(image, top_k=2)
    assert maps.maps.shape == (2, 24, 40) and len(maps.classes) == 2
    h, w = maps.grid
    assert maps.cells.shape == (2, h, w)
    np.testing.assert_allclose(maps.cells.sum(axis=(1, 2)), 1.0, atol=1e-5)
    scored = predictor.predict([image])
    top = np.argsort(-scored.log_odds[0], kind="stable")[:2]
    assert maps.classes == [predictor.classnames[c] for c in top]
    np.testing.assert_allclose(maps.probabilities, scored.probabilities[0, top], atol=1e-5)
    with pytest.raises(ConfigError, match="zero-shot"):
        Predictor.zero_shot(["cat", "dog"]).attention(image)


def test_ensemble_predictor_combines_calibrated_members(trained, tmp_path):
    """A spec of the checkpoint twice with other calibrations: the weighted sum of calibrated
    logits (METHODS §12), and what predict writes for the spec."""
    checkpoint, images = trained
    members = [EnsembleMember(str(checkpoint), 0.7, Calibration(1.5, -0.2), file_digest(checkpoint)),
               EnsembleMember(str(checkpoint), 0.3, Calibration(0.5, 0.4), file_digest(checkpoint))]
    spec = Ensemble(members, Predictor.from_checkpoint(checkpoint).classnames).save(tmp_path / "ensemble.json")
    predictor = Predictor.from_checkpoint(spec)
    assert len(predictor.models) == 2
    model = load_model(str(checkpoint))
    transform = eval_transform(model.backbone.image_size, model.backbone.mean, model.backbone.std)
    with torch.no_grad():
        raw = model(torch.stack([transform(Image.open(p).convert("RGB")) for p in images])).logits.double().numpy()
    expected = 0.7 * (1.5 * raw - 0.2) + 0.3 * (0.5 * raw + 0.4)
    result = predictor.predict(images)
    np.testing.assert_allclose(result.log_odds, expected, atol=1e-4)
    assert result.labels == [[predictor.classnames[c] for c in np.argsort(-row, kind="stable") if row[c] >= 0]
                             for row in result.log_odds]
    records = _tool_output(["--checkpoint", str(spec), *map(str, images)], tmp_path / "e.json")
    assert [r["labels"] for r in records] == result.labels
    np.testing.assert_array_equal([[r["probabilities"][c] for c in result.classnames] for r in records],
                                  result.probabilities.round(5))


def test_readme_example_runs(trained, capsys):
    """The README's library example, run as written with the demo paths replaced by the tiny run's."""
    checkpoint, images = trained
    block = re.search(r"```python\n(from clipml import Predictor\n.*?)```", README.read_text(), re.S)
    assert block is not None, "README: the Predictor example block is missing"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 5 and "runs/demo/prompts.safetensors" in code and "image.jpg" in code
    code = code.replace("runs/demo/prompts.safetensors", str(checkpoint)).replace("image.jpg", str(images[0]))
    exec(compile(code, str(README), "exec"), {})
    expected = Predictor.from_checkpoint(checkpoint).predict(images[0]).labels[0]
    assert capsys.readouterr().out.strip() == str(expected)
