"""The command-line tools as a user runs them: train, evaluate zero-shot and with a checkpoint, predict."""

import contextlib
import csv
import io
import json

import pytest
import torch
import yaml
from PIL import Image

from clipml.cli import predict, train_prompts, zero_shot_eval
from clipml.lab.world import write_synthetic_dataset


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    config = {
        "name": "cli",
        "output_dir": str(tmp / "runs" / "{name}"),
        "backbone": {"spec": "open_clip:clipml-tiny-vit", "image_size": 32, "allow_random": True},
        "data": {"options": {"num_images": 64}, "mask_dir": str(tmp / "masks"), "workers": 0,
                 "batch_size": 16, "val_fraction": 0.25},
        "model": {"n_ctx": 4, "decoupler_dim": 16},
        "optim": {"name": "adamw", "lr": 0.01, "epochs": 1},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, tmp


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_yaml):
    path, tmp = tiny_yaml
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train_prompts(["--config", str(path), "--no-resume"])
    checkpoint = tmp / "runs" / "cli" / "prompts.safetensors"
    checkpoint.with_name("stdout.txt").write_text(printed.getvalue())
    return checkpoint


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


def test_predict_probabilities_are_those_of_the_model_on_normalised_images(trained_checkpoint, tmp_path):
    """uint8 images normalised on the device: the same probabilities as float32 images fed to the model."""
    from clipml.data.transforms import eval_transform
    from clipml.engine.train import load_model

    write_synthetic_dataset(tmp_path / "world", {"test": 3}, seed=4)
    paths = sorted((tmp_path / "world" / "images").rglob("*.jpg"))
    out_json = tmp_path / "p.json"
    predict(["--checkpoint", str(trained_checkpoint), *map(str, paths), "--output", str(out_json),
             "--workers", "0", "--batch-size", "2"])
    model = load_model(str(trained_checkpoint))
    backbone = model.backbone
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std)
    images = torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])
    with torch.no_grad():
        expected = torch.sigmoid(model(images).logits)
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
