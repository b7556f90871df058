"""A user's own partial labels (issue 24): naming a validation split and the warning on a tiny
one, continuing a run for more epochs or from a checkpoint, zero_shot_eval scoring a checkpoint on
its own data, overrides after flags, one log line per mask, and small-data errors that say why."""

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest

from clipml.cli import train_prompts, visualize_attention, zero_shot_eval
from clipml.data.base import MultiLabelSplit
from clipml.data.splits import carve_validation, require_positives
from clipml.engine.builders import build_splits
from clipml.engine.distributed import DistContext
from clipml.engine.train import train
from clipml.errors import ConfigError, DataError
from clipml.experiment import load_experiment
from clipml.lab.world import write_synthetic_dataset
from conftest import TINY_RUN

pytestmark = pytest.mark.integration  # trains end to end: left out of the quick subset

REPO = Path(__file__).resolve().parent.parent
TINY = [*TINY_RUN, "optim.epochs=1", "data.known_ratio=0.5"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A manifest dataset of JPEGs with its own validation file: 40 train, 12 val, 12 test images."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("own"), {"train": 40, "val": 12, "test": 12},
                                   seed=3, image_size=32)


def own(tmp_path, world, name, *overrides):
    return [*TINY, "data.dataset=manifest", f"data.root={world}", f"data.mask_dir={tmp_path / 'masks'}",
            f"output_dir={tmp_path / 'runs' / '{name}'}", f"name={name}", *overrides]


def run_cli(tool, args, capsys):
    try:
        tool(args)
        code = 0
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def test_a_named_validation_split_is_used_as_given_and_a_tiny_one_warns_with_numbers(tmp_path, world, caplog):
    carved = build_splits(load_experiment(None, own(tmp_path, world, "carved")))
    assert [len(s) for s in carved] == [36, 4, 12]
    cfg = load_experiment(None, own(tmp_path, world, "named", "data.val_split=val"))
    train_split, val, _ = build_splits(cfg)
    assert len(train_split) == 40 and len(val) == 12 and val.split == "val"
    assert (val.labels != -1).all()  # the file's labels, not masked
    by_file = build_splits(load_experiment(None, own(tmp_path, world, "f", f"data.val_split={world / 'val.jsonl'}")))[1]
    assert by_file.items == val.items
    with caplog.at_level(logging.WARNING, logger="clipml"):
        summary = train(cfg)
    assert summary["splits"]["val"] == "12 images of data.val_split='val' (labels as given)"
    warning = next(r.getMessage() for r in caplog.records if "validation split" in r.getMessage())
    positives = (val.labels == 1).sum(axis=0)
    assert (f"holds little to select epochs on: 12 images, {positives.sum()} known positives; {(positives < 2).sum()} "
            f"of {val.num_classes} classes have fewer than 2 known positives there ({(positives == 0).sum()} none)") in warning
    with pytest.raises(ConfigError, match="data.val_split='train' is also the training or test split"):
        load_experiment(None, own(tmp_path, world, "x", "data.val_split=train"))
    with pytest.raises(DataError, match="shares 40 image"):
        build_splits(load_experiment(None, own(tmp_path, world, "x", f"data.val_split={world / 'train.jsonl'}")))


def test_raising_epochs_continues_a_finished_run_on_the_stretched_schedule(tmp_path, world):
    first = train(load_experiment(None, own(tmp_path, world, "run", "optim.epochs=2", "optim.warmup_epochs=0")))
    assert [r["epoch"] for r in first["history"]] == [1, 2]
    more = train(load_experiment(None, own(tmp_path, world, "run", "optim.epochs=4", "optim.warmup_epochs=0")))
    assert [r["epoch"] for r in more["history"]] == [1, 2, 3, 4]
    assert more["history"][:2] == first["history"]
    # The cosine over the new length: after epoch 3 of 4, lr = 0.01 * (1 + cos(pi * 3/4)) / 2.
    assert more["history"][2]["lr"] == pytest.approx(0.01 * (1 + math.cos(math.pi * 3 / 4)) / 2, rel=1e-6)
    assert more["history"][3]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ConfigError, match="holds 4 trained epochs, more than optim.epochs=3"):
        train(load_experiment(None, own(tmp_path, world, "run", "optim.epochs=3", "optim.warmup_epochs=0")))


def test_init_from_starts_training_from_a_checkpoint(tmp_path, world, capsys):
    first = train(load_experiment(None, own(tmp_path, world, "a", "optim.epochs=2")))
    checkpoint = tmp_path / "runs" / "a" / "prompts.safetensors"
    code, out, err = run_cli(train_prompts, ["--config", str(REPO / "clipml" / "assets" / "demo.yaml"),
                                             *own(tmp_path, world, "b"), "data.options={}", "data.cache=false",
                                             "--init-from", str(checkpoint), "--device", "cpu"], capsys)
    assert code == 0, err
    second = json.loads((tmp_path / "runs" / "b" / "summary.json").read_text())
    # Where run b starts is where run a's best epoch ended, on the same validation part.
    assert second["initial_val"]["mAP"] == pytest.approx(first["val"]["mAP"], abs=1e-6)
    assert second["init_from"] == str(checkpoint)
    code, _, err = run_cli(train_prompts, [*own(tmp_path, world, "c"), "--init-from", str(tmp_path / "no.safetensors")],
                           capsys)
    assert code == 2 and "checkpoint not found" in err and not (tmp_path / "runs" / "c").exists()  # before any data


def test_zero_shot_eval_scores_a_checkpoint_on_the_data_it_was_trained_on(tmp_path, world, capsys):
    summary = train(load_experiment(None, own(tmp_path, world, "z")))
    checkpoint = str(tmp_path / "runs" / "z" / "prompts.safetensors")
    code, out, err = run_cli(zero_shot_eval, ["--checkpoint", checkpoint, "--device", "cpu"], capsys)
    assert code == 0, err
    assert f"config: the one {checkpoint} was trained with (dataset manifest" in err
    assert "on manifest, the dataset's own split 'test' (12 images)" in out
    assert float(re.search(r"mAP (\d+\.\d+)", out).group(1)) == pytest.approx(summary["test"]["mAP"], abs=0.006)


def test_overrides_may_follow_flags(capsys):
    demo = str(REPO / "clipml" / "assets" / "demo.yaml")
    for tool in (train_prompts, zero_shot_eval):
        code, out, _ = run_cli(tool, ["--config", demo, "data.known_ratio=0.3", "--device", "cpu", "optim.epochs=3",
                                      "--print-config"], capsys)
        assert code == 0
        assert re.search(r"^data.known_ratio = 0.3 ", out, re.M) and re.search(r"^optim.epochs = 3 ", out, re.M)
        assert re.search(r'^device = "cpu" ', out, re.M)


def test_main_first_runs_once_so_mask_and_split_lines_print_once(tmp_path, world, caplog):
    calls = []
    assert DistContext().main_first(lambda: calls.append(1) or "value") == "value" and calls == [1]
    with caplog.at_level(logging.INFO, logger="clipml"):
        train(load_experiment(None, own(tmp_path, world, "once")))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("new mask" in m for m in messages) == 1
    assert sum(m.startswith("manifest: 36 train, 4 val, 12 test images") for m in messages) == 1


def test_small_data_errors_name_the_split_and_the_cause():
    def split(n, labels=None):
        return MultiLabelSplit("mine", "train", ["a", "b"], [f"{i}.jpg" for i in range(n)],
                               np.zeros((n, 2)) if labels is None else labels)

    for n in (0, 1):
        with pytest.raises(DataError, match=rf"split 'train' of mine has {n} image\(s\): at least 2 are needed"):
            carve_validation(split(n))
    with pytest.raises(ConfigError, match=r"data.val_fraction=0.01 carves 0 of the 10 images of split 'train'"):
        carve_validation(split(10), fraction=0.01)
    _, val = carve_validation(split(10, np.full((10, 2), -1)), fraction=0.3)
    with pytest.raises(DataError, match=r"split mine/train-val \(3 images, 0 known labels\) has no known positive "
                                        r"label.*raise data.val_fraction or data.known_ratio.*data.val_split"):
        require_positives(val)


def test_visualize_attention_takes_folders_and_skips_bad_files(tmp_path, world, capsys):
    train(load_experiment(None, own(tmp_path, world, "v")))
    folder = tmp_path / "pictures"
    (folder / "sub").mkdir(parents=True)
    (folder / "good.jpg").write_bytes(sorted((world / "images" / "test").iterdir())[0].read_bytes())
    (folder / "sub" / "broken.png").write_text("not an image")
    code, out, err = run_cli(visualize_attention, ["--checkpoint", str(tmp_path / "runs" / "v" / "prompts.safetensors"),
                                                   str(folder), "--output", str(tmp_path / "maps"),
                                                   "--device", "cpu", "--top-k", "2"], capsys)
    assert code == 0, err
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["good_attention.png"]
    assert "skipped" in err and "broken.png" in err and "cannot decode image" in err
    assert "1 of 2 file(s) skipped" in err
    (folder / "good.jpg").unlink()
    code, _, err = run_cli(visualize_attention, ["--checkpoint", str(tmp_path / "runs" / "v" / "prompts.safetensors"),
                                                 str(folder), "--device", "cpu"], capsys)
    assert code == 2 and "none of the 1 image file(s) could be read" in err
