"""Label completion (issue 24): a manifest's unknown entries filled with a checkpoint's
probabilities and labels, known entries untouched, the result readable by clipml again."""

import csv
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from clipml.cli import complete_labels as complete_labels_cli
from clipml.completion import complete_labels
from clipml.data import NEGATIVE, POSITIVE, UNKNOWN, load_manifest, load_split
from clipml.data.transforms import eval_transform
from clipml.engine.checkpoint import load_model, read_prompt_checkpoint
from clipml.engine.train import train
from clipml.errors import ClipmlError, ConfigError, DataError
from clipml.experiment import load_experiment
from clipml.lab.world import write_synthetic_dataset

TINY = ["backbone.spec=open_clip:clipml-tiny-vit", "backbone.image_size=32", "backbone.allow_random=true",
        "data.workers=0", "data.batch_size=8", "data.val_fraction=0.25", "data.known_ratio=1.0",
        "data.options={}", "model.n_ctx=4", "model.sdm_csp.decoupler_dim=16", "optim.name=adamw", "optim.lr=0.01",
        "optim.epochs=1", "loss.reduction=mean"]


def hide_labels(record, index):
    """Move some known entries of a record to "unknown" (a different pattern per record)."""
    positive, negative = record["positive"], record.get("negative", [])
    hidden = negative[index % 3::3] + (positive[:1] if index % 2 else [])
    record["positive"] = [c for c in positive if c not in hidden]
    record["negative"] = [c for c in negative if c not in hidden]
    record["unknown"] = hidden
    return record


@pytest.fixture(scope="module")
def partial_world(tmp_path_factory):
    """A JPEG manifest world whose train.jsonl has unknown entries, and a checkpoint trained on it."""
    tmp = tmp_path_factory.mktemp("completion")
    root = write_synthetic_dataset(tmp / "world", {"train": 24, "test": 8}, seed=5, image_size=32)
    lines = (root / "train.jsonl").read_text().splitlines()
    records = [hide_labels(json.loads(line), i) for i, line in enumerate(lines)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = load_experiment(None, [*TINY, "data.dataset=manifest", f"data.root={root}",
                                 f"data.mask_dir={tmp / 'masks'}", f"output_dir={tmp / 'runs' / '{name}'}",
                                 "name=partial"])
    train(cfg, resume=False)
    return root, tmp / "runs" / "partial" / "prompts.safetensors"


def expected_probabilities(checkpoint, paths):
    """The checkpoint's calibrated sigmoid (Platt scale and bias on the logits, as `predict` shows
    probabilities) of the model's logits on float32 images normalised on the CPU (not `predict`'s
    uint8 path), columns in the checkpoint's class order."""
    model = load_model(str(checkpoint))
    backbone = model.backbone
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std)
    images = torch.stack([transform(Image.open(path).convert("RGB")) for path in paths])
    calibration = read_prompt_checkpoint(checkpoint)[1]["thresholds"]["calibration"]
    with torch.no_grad():
        logits = model(images).logits.double()
    return torch.sigmoid(calibration["scale"] * logits + calibration["bias"]).numpy(), model.classnames


def test_completion_fills_every_unknown_entry_and_keeps_the_known_ones(partial_world, tmp_path):
    root, checkpoint = partial_world
    out = root / "train_completed.jsonl"  # beside the original: same classes.txt and image root
    result = complete_labels(checkpoint, root / "train.jsonl", out, batch_size=5)
    original = load_manifest(root / "train.jsonl")
    assert (original.labels == UNKNOWN).sum() > 20  # the test has something to fill
    assert result.filled == (original.labels == UNKNOWN).sum() and not result.skipped

    # read back as written (predicted entries unknown): exactly the original labels
    again = load_manifest(out)
    assert again.items == original.items and again.classes == original.classes
    np.testing.assert_array_equal(again.labels, original.labels)

    # read back with predicted labels: known entries unchanged, every unknown one filled
    filled = load_manifest(out, predicted="labels")
    known = original.labels != UNKNOWN
    np.testing.assert_array_equal(filled.labels[known], original.labels[known])
    assert np.isin(filled.labels, (POSITIVE, NEGATIVE)).all()
    assert (filled.labels[~known] == POSITIVE).sum() == result.predicted_positive

    # probabilities and labels: those of the model on each image (an independent path), at the
    # checkpoint's validation thresholds
    records = [json.loads(line) for line in out.read_text().splitlines()]
    expected, model_classes = expected_probabilities(checkpoint, [root / r["image"] for r in records])
    stored = read_prompt_checkpoint(checkpoint)[1]["thresholds"]
    compared = 0
    for record, row, original_row in zip(records, expected, original.labels):
        unknown = [original.classes[c] for c in np.flatnonzero(original_row == UNKNOWN)]
        predicted = record.get("predicted", {"positive": [], "negative": [], "probability": {}})
        assert sorted(predicted["probability"]) == sorted(unknown)
        assert "unknown" not in record
        for name, probability in predicted["probability"].items():
            p = row[model_classes.index(name)]
            assert abs(probability - p) < 2e-6, (record["image"], name)
            calibration = stored["calibration"]
            cut_logit = stored["per_class"].get(name, stored["global"])
            cut = 1 / (1 + np.exp(-(calibration["scale"] * cut_logit + calibration["bias"])))
            if abs(p - cut) > 1e-5:
                assert (name in predicted["positive"]) == (p >= cut)
                compared += 1
    assert compared > 20


def test_completed_manifest_trains_through_the_data_options(partial_world, tmp_path, caplog):
    """The completed file is a dataset input: load_split takes data.options.predicted and checks it;
    written in another folder, it is read with the original's image root (the log says so)."""
    root, checkpoint = partial_world
    out = tmp_path / "train.jsonl"
    (tmp_path / "classes.txt").write_text((root / "classes.txt").read_text())
    with caplog.at_level(logging.WARNING, logger="clipml"):
        complete_labels(checkpoint, root / "train.jsonl", out)
    assert f"data.options.image_root={root}" in caplog.text
    split = load_split("manifest", tmp_path, "train", image_root=str(root), predicted="labels")
    assert (split.labels != UNKNOWN).all()
    assert not split.labels_complete  # predictions are not an annotation: kept as they are, never masked at p
    with pytest.raises(ConfigError, match="data.options.predicted must be one of"):
        load_split("manifest", tmp_path, "train", image_root=str(root), predicted="soft")


def test_csv_manifest_and_unlisted_unknown_are_completed(partial_world, tmp_path):
    """A CSV manifest whose records list only positives, read with unlisted=unknown: every class
    not listed is filled, and the completed file reads back the same with or without that option."""
    root, checkpoint = partial_world
    records = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines()]
    with open(tmp_path / "test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "positive"])
        for record in records:
            writer.writerow([record["image"], ";".join(record["positive"])])
    original = load_manifest(tmp_path / "test.csv", classes=root / "classes.txt", unlisted="unknown", image_root=root)
    out = tmp_path / "test_completed.jsonl"
    result = complete_labels(checkpoint, tmp_path / "test.csv", out, classes=root / "classes.txt",
                             unlisted="unknown", image_root=root)
    assert result.filled == (original.labels == UNKNOWN).sum() == len(records) * len(original.classes) - sum(
        len(r["positive"]) for r in records)
    for unlisted in ("negative", "unknown"):
        again = load_manifest(out, classes=root / "classes.txt", unlisted=unlisted, image_root=root)
        np.testing.assert_array_equal(again.labels, original.labels)


def test_probabilities_follow_class_names_not_columns(partial_world, tmp_path):
    """A classes file in another order than the checkpoint's: each class keeps its own probability."""
    root, checkpoint = partial_world
    names = (root / "classes.txt").read_text().split("\n")
    (tmp_path / "reversed.txt").write_text("\n".join(reversed([n for n in names if n])) + "\n")
    natural, reversed_out = root / "natural.jsonl", root / "reversed.jsonl"
    complete_labels(checkpoint, root / "train.jsonl", natural)
    complete_labels(checkpoint, root / "train.jsonl", reversed_out, classes=tmp_path / "reversed.txt")
    for a, b in zip(natural.read_text().splitlines(), reversed_out.read_text().splitlines()):
        a, b = json.loads(a)["predicted"], json.loads(b)["predicted"]  # every train record has unknowns
        assert a["probability"] == b["probability"] and sorted(a["positive"]) == sorted(b["positive"])
        assert a["probability"].keys() == set(a["positive"]) | set(a["negative"])


def test_undecodable_image_keeps_its_unknown_entries(partial_world, tmp_path, caplog):
    import shutil

    root, checkpoint = partial_world
    copy = tmp_path / "world"
    shutil.copytree(root, copy)
    first = json.loads((copy / "train.jsonl").read_text().splitlines()[1])  # record 1 has unknowns
    (copy / first["image"]).write_bytes(b"not an image")
    out = copy / "completed.jsonl"
    with caplog.at_level(logging.WARNING, logger="clipml"):
        result = complete_labels(checkpoint, copy / "train.jsonl", out)
    assert [path.name for path, _ in result.skipped] == [(copy / first["image"]).name]
    assert "not completed, cannot be decoded" in caplog.text
    written = json.loads(out.read_text().splitlines()[1])
    assert written["unknown"] == first["unknown"] and "predicted" not in written
    np.testing.assert_array_equal(load_manifest(out, check_images=False).labels,
                                  load_manifest(copy / "train.jsonl", check_images=False).labels)


@pytest.mark.parametrize("predicted, message", [
    ({"positive": ["cat"]}, "must map each predicted class"),
    ({"positive": ["cat"], "probability": {"cat": 1.5}}, "must map each predicted class"),
    ({"maybe": []}, "'predicted' must be an object with keys"),
])
def test_malformed_predicted_entries_are_one_error_naming_the_line(tmp_path, predicted, message):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    (tmp_path / "a.jsonl").write_text(json.dumps({"image": "a.jpg", "positive": [], "predicted": predicted}) + "\n")
    with pytest.raises(DataError, match=f"a.jsonl line 1: .*{message}"):
        load_manifest(tmp_path / "a.jsonl", check_images=False)


def test_a_predicted_class_that_is_also_annotated_is_refused(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    record = {"image": "a.jpg", "positive": ["cat"],
              "predicted": {"positive": ["cat"], "negative": [], "probability": {"cat": 0.9}}}
    (tmp_path / "a.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError, match="class 'cat' listed in both 'positive' and 'predicted positive'"):
        load_manifest(tmp_path / "a.jsonl", check_images=False)


def test_the_tool_refuses_careless_outputs_and_unknown_classes(partial_world, tmp_path, capsys):
    root, checkpoint = partial_world
    for output, message in [(root / "train.jsonl", "is the manifest itself"),
                            (tmp_path / "out.csv", "name it *.jsonl")]:
        with pytest.raises(SystemExit):
            complete_labels_cli(["--checkpoint", str(checkpoint), str(root / "train.jsonl"), "--output", str(output)])
        assert message in capsys.readouterr().err
    (tmp_path / "classes.txt").write_text((root / "classes.txt").read_text() + "unicorn\n")
    with pytest.raises(ClipmlError, match=r"no learned prompts for classes \['unicorn'\]"):
        complete_labels(checkpoint, root / "train.jsonl", tmp_path / "out.jsonl", classes=tmp_path / "classes.txt",
                        unlisted="unknown")
    out = tmp_path / "done.jsonl"
    complete_labels_cli(["--checkpoint", str(checkpoint), str(root / "train.jsonl"), "--output", str(out),
                         "--threshold", "0.5", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "filled" in printed and "probability >= 0.5 (--threshold)" in printed and str(out) in printed
    for line in out.read_text().splitlines():
        predicted = json.loads(line).get("predicted")
        if predicted:
            assert all((p >= 0.5) == (name in predicted["positive"]) for name, p in predicted["probability"].items())
