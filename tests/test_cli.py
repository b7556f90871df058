"""The command-line tools as a user runs them: train, evaluate zero-shot and with a checkpoint, predict."""

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

from clipml.cli import predict, train_prompts, zero_shot_eval
from clipml.engine.checkpoint import read_prompt_checkpoint
from clipml.lab.world import write_synthetic_dataset

pytestmark = pytest.mark.integration  # trains end to end: left out of the quick subset


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    config = {
        "name": "cli",
        "output_dir": str(tmp / "runs" / "{name}"),
        "backbone": {"spec": "open_clip:clipml-tiny-vit", "image_size": 32, "allow_random": True},
        "data": {"options": {"num_images": 64}, "mask_dir": str(tmp / "masks"), "workers": 0,
                 "batch_size": 16, "val_fraction": 0.25},
        "model": {"n_ctx": 4, "sdm_csp": {"decoupler_dim": 16}},
        "optim": {"name": "adamw", "lr": 0.01, "epochs": 1},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, tmp


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_yaml):
    path, tmp = tiny_yaml
    printed, header = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(header):
        train_prompts(["--config", str(path), "--no-resume"])
    checkpoint = tmp / "runs" / "cli" / "prompts.safetensors"
    checkpoint.with_name("stdout.txt").write_text(printed.getvalue())
    checkpoint.with_name("stderr.txt").write_text(header.getvalue())
    return checkpoint


@pytest.fixture(scope="module")
def calibrated_checkpoint(trained_checkpoint):
    """The trained checkpoint with a known Platt scaling (the tiny untrained-looking model's own fit
    may be none): predict must show sigmoid(0.5 logit - 1) and move its thresholds alike."""
    from safetensors.torch import load_file, save_file

    _, metadata = read_prompt_checkpoint(trained_checkpoint)
    metadata["thresholds"]["calibration"] = {"scale": 0.5, "bias": -1.0}
    path = trained_checkpoint.with_name("calibrated.safetensors")
    save_file(load_file(str(trained_checkpoint)), str(path), metadata={"clipml": json.dumps(metadata)})
    return path


def test_train_prints_table_and_saves_checkpoint(trained_checkpoint):
    assert trained_checkpoint.is_file()
    printed = trained_checkpoint.with_name("stdout.txt").read_text()
    assert "test, zero-shot" in printed and "mAP" in printed and str(trained_checkpoint) in printed


def test_zero_shot_eval_prints_per_class_ap(tiny_yaml, capsys):
    path, _ = tiny_yaml
    zero_shot_eval(["--config", str(path), "--templates", "default", "--scoring", "dense"])
    out = capsys.readouterr().out
    assert "class" in out and "AP" in out and "mAP" in out and "16 template(s), dense" in out


def test_zero_shot_eval_with_checkpoint(tiny_yaml, trained_checkpoint, capsys):
    path, _ = tiny_yaml
    zero_shot_eval(["--config", str(path), "--checkpoint", str(trained_checkpoint)])
    assert "prompt checkpoint" in capsys.readouterr().out


def test_predict_on_a_folder(trained_checkpoint, tmp_path, capsys):
    write_synthetic_dataset(tmp_path / "world", {"test": 5}, seed=3)
    images = tmp_path / "world" / "images"
    out_csv, out_json = tmp_path / "p.csv", tmp_path / "p.json"
    predict(["--checkpoint", str(trained_checkpoint), str(images), "--output", str(out_csv)])
    rows = list(csv.reader(out_csv.open()))
    assert len(rows) == 1 + 5 and rows[0][:2] == ["image", "labels"]
    predict(["--checkpoint", str(trained_checkpoint), str(images), "--output", str(out_json), "--threshold", "0"])
    records = json.loads(out_json.read_text())
    assert len(records) == 5 and len(records[0]["labels"]) == len(records[0]["probabilities"])


def test_predict_probabilities_are_those_of_the_model_on_normalised_images(calibrated_checkpoint, tmp_path):
    """uint8 images normalised on the device: the same probabilities as float32 images fed to the model."""
    from clipml.data.transforms import eval_transform
    from clipml.engine.checkpoint import load_model

    write_synthetic_dataset(tmp_path / "world", {"test": 3}, seed=4)
    paths = sorted((tmp_path / "world" / "images").rglob("*.jpg"))
    out_json = tmp_path / "p.json"
    predict(["--checkpoint", str(calibrated_checkpoint), *map(str, paths), "--output", str(out_json),
             "--batch-size", "2"])
    model = load_model(str(calibrated_checkpoint))
    backbone = model.backbone
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std)
    images = torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])
    calibration = read_prompt_checkpoint(calibrated_checkpoint)[1]["thresholds"]["calibration"]
    with torch.no_grad():  # the checkpoint's Platt scaling turns the logits into the log-odds shown
        expected = torch.sigmoid(calibration["scale"] * model(images).logits.double() + calibration["bias"]).float()
    records = json.loads(out_json.read_text())
    assert [record["image"] for record in records] == [str(path.resolve()) for path in paths]
    found = torch.tensor([list(record["probabilities"].values()) for record in records])
    torch.testing.assert_close(found, expected, rtol=0, atol=6e-6)  # printed with 5 decimals


def test_user_errors_are_one_line(tiny_yaml, capsys):
    path, _ = tiny_yaml
    with pytest.raises(SystemExit) as exit_info:
        train_prompts(["--config", str(path), "optim.learning_rate=0.1"])
    assert exit_info.value.code == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict(["--checkpoint", "missing.safetensors", "nowhere.jpg"])
    assert "input not found: nowhere.jpg" in capsys.readouterr().err


# Issue 16 (loss header, thresholds) and issue 18 items 5-6 (predict on careless input) --------


def test_train_header_names_the_loss_and_its_reduction(trained_checkpoint):
    """The tiny config sets no reduction: ASL gets its reference's sum, and the header says so."""
    assert "loss asl reduction sum" in trained_checkpoint.with_name("stderr.txt").read_text()
    printed = trained_checkpoint.with_name("stdout.txt").read_text()
    assert "AP: envelope" in printed and "top3: reference rule" in printed and "CF1_tuned" in printed


def _synthetic_images(tmp_path, count=4):
    write_synthetic_dataset(tmp_path / "world", {"test": count}, seed=3)
    return sorted((tmp_path / "world" / "images").rglob("*.jpg"))


def test_predict_lists_labels_at_the_validation_thresholds(calibrated_checkpoint, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    trained_checkpoint = calibrated_checkpoint
    _, metadata = read_prompt_checkpoint(trained_checkpoint)
    stored = metadata["thresholds"]
    assert set(stored["per_class"]) | set(stored["fallback"]) == set(metadata["classes"])
    images = _synthetic_images(tmp_path)
    out = tmp_path / "p.json"
    predict(["--checkpoint", str(trained_checkpoint), *map(str, images), "--output", str(out)])
    assert "per-class thresholds chosen on the validation split" in capsys.readouterr().err.replace("\n", " ")
    scale, bias = stored["calibration"]["scale"], stored["calibration"]["bias"]
    for record in json.loads(out.read_text()):
        for name, p in record["probabilities"].items():  # probabilities are written to 5 decimals
            cut = 1 / (1 + np.exp(-(scale * stored["per_class"].get(name, stored["global"]) + bias)))
            if abs(p - cut) > 1e-5:
                assert (name in record["labels"]) == (p > cut), (name, p, cut)
    predict(["--checkpoint", str(trained_checkpoint), str(images[0]), "--threshold", "0", "--top-k", "2"])
    line = capsys.readouterr().out.strip()
    listed = line.split(": ", 1)[1].split(", ")
    assert len(listed) == 2 and all(re.fullmatch(r".+ \([01]\.\d{3}\)", item) for item in listed)  # "dog (0.912)"
    # a checkpoint from before calibration was stored: its thresholds on the plain sigmoid, with a notice
    del metadata["thresholds"]["calibration"]
    uncalibrated = tmp_path / "uncalibrated.safetensors"
    save_file(load_file(str(trained_checkpoint)), str(uncalibrated), metadata={"clipml": json.dumps(metadata)})
    predict(["--checkpoint", str(uncalibrated), str(images[0]), "--output", str(tmp_path / "uncalibrated.json")])
    assert "the checkpoint predates calibration" in capsys.readouterr().err
    record = json.loads((tmp_path / "uncalibrated.json").read_text())[0]
    for name, p in record["probabilities"].items():
        cut = 1 / (1 + np.exp(-stored["per_class"].get(name, stored["global"])))
        if abs(p - cut) > 1e-5:
            assert (name in record["labels"]) == (p > cut), (name, p, cut)
    # a checkpoint from before thresholds were stored: 0.5, with a notice
    del metadata["thresholds"]
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(trained_checkpoint)), str(old), metadata={"clipml": json.dumps(metadata)})
    predict(["--checkpoint", str(old), str(images[0]), "--output", str(tmp_path / "old.json")])
    assert "probability >= 0.5: the checkpoint holds no validation thresholds" in capsys.readouterr().err
    record = json.loads((tmp_path / "old.json").read_text())[0]
    assert sorted(record["labels"]) == sorted(n for n, p in record["probabilities"].items() if p >= 0.5)


def test_predict_skips_undecodable_files_and_says_why(trained_checkpoint, tmp_path, capsys, monkeypatch):
    from PIL import ImageFile

    images = _synthetic_images(tmp_path, count=3)
    folder = images[0].parent
    (folder / "notes.jpg").write_text("not an image")
    (folder / "cut.jpg").write_bytes(images[0].read_bytes()[:-100])  # a truncated JPEG
    # strict even where another library asked PIL to pad truncated files silently
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    out = tmp_path / "p.csv"
    predict(["--checkpoint", str(trained_checkpoint), str(folder), "--output", str(out)])
    rows = list(csv.reader(out.open()))
    assert [Path(row[0]).name for row in rows[1:]] == [p.name for p in images]
    err = capsys.readouterr().err
    assert f"skipped {folder / 'cut.jpg'}: cannot decode image" in err and "truncated" in err
    assert f"skipped {folder / 'notes.jpg'}: cannot decode image" in err
    assert "2 of 5 file(s) skipped" in err
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is left as it was
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(SystemExit) as exit_info:
        predict(["--checkpoint", str(trained_checkpoint), str(bad)])
    assert exit_info.value.code == 2
    assert "none of the 1 image file(s) could be read" in capsys.readouterr().err


@pytest.mark.parametrize("arguments,message", [
    (["--threshold", "1.5"], "a probability threshold must be in [0, 1], got 1.5"),
    (["--threshold", "-0.1"], "a probability threshold must be in [0, 1], got -0.1"),
    (["--output", "out.txt"], "--output out.txt: unknown extension '.txt'; expected .csv or .json"),
    (["--top-k", "0"], "--top-k must be at least 1"),
])
def test_predict_refuses_careless_options_before_loading_anything(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        predict(["--checkpoint", str(tmp_path / "missing.safetensors"), str(tmp_path), *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.txt").exists()


def test_predict_calibration_and_thresholds_are_fit_on_the_carved_validation_part(tiny_yaml, trained_checkpoint,
                                                                                  tmp_path):
    """Issue 24: the stored Platt scaling and thresholds come from the validation part carved from
    the training split (its scores exported by zero_shot_eval --split carved-val), not the test split."""
    from clipml.engine.evaluate import choose_thresholds
    from clipml.ensemble import fit_calibration
    from clipml.experiment import EvalConfig
    from clipml.known_scores import KnownScores

    path, _ = tiny_yaml
    scores = tmp_path / "val.csv"
    with contextlib.redirect_stdout(io.StringIO()):
        zero_shot_eval(["--config", str(path), "--checkpoint", str(trained_checkpoint), "--split", "carved-val",
                        "--export-scores", str(scores)])
    rows = list(csv.DictReader(scores.open()))
    _, metadata = read_prompt_checkpoint(trained_checkpoint)
    classes = metadata["classes"]
    logits = np.array([float(row["logit"]) for row in rows]).reshape(-1, len(classes))
    labels = np.array([int(row["label"]) for row in rows], dtype=np.int8).reshape(-1, len(classes))
    stored = metadata["thresholds"]
    expected = fit_calibration(logits, labels)
    if expected.scale > 0:
        assert stored["calibration"]["scale"] == pytest.approx(expected.scale, rel=1e-4)
        assert stored["calibration"]["bias"] == pytest.approx(expected.bias, rel=1e-4, abs=1e-6)
    else:  # these validation logits rank against the labels: no calibration is stored
        assert stored["calibration"] is None
    again = choose_thresholds(KnownScores.from_dense(logits, labels), classes, EvalConfig())
    assert stored["fallback"] == again["fallback"] and stored["min_positives"] == 5 and stored["floor"] == 0.1
    assert stored["global"] == pytest.approx(again["global"], rel=1e-4)
