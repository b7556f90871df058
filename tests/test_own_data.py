"""A user's own partially labelled images (issue 24, and resume identity from issue 25): the
feature cache follows the image files, the user's unknowns are kept as they are, classes a
record leaves out are an explicit choice, and a run folder resumes only the same experiment on
the same data."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from clipml.cli import train_prompts
from clipml.config import config_to_dict, save_config
from clipml.data import UNKNOWN, load_split
from clipml.engine.builders import build_backbone, build_splits
from clipml.engine.cache import build_feature_cache
from clipml.engine.train import train
from clipml.errors import ConfigError, DataError
from clipml.experiment import config_differences, load_experiment
from clipml.lab.world import write_synthetic_dataset
from conftest import TINY_RUN
from clipml.sweep import SweepSpec, run_sweep

pytestmark = pytest.mark.integration  # trains end to end: left out of the quick subset

TINY = [*TINY_RUN, "data.val_fraction=0.25", "optim.epochs=1", "data.dataset=manifest", "data.options={}"]


@pytest.fixture(scope="module")
def complete_world(tmp_path_factory):
    """The lab's world written as a manifest with every class listed (positive or negative)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("complete"), {"train": 48, "test": 8}, seed=5,
                                   image_size=32)


def partial_copy(world: Path, to: Path, known: float = 0.16, positive_only: bool = False) -> Path:
    """A copy of `world` whose training manifest keeps about `known` of its entries (the rest
    listed as "unknown"), or, with `positive_only`, lists only the positives of each image."""
    shutil.copytree(world, to)
    rng = np.random.RandomState(0)
    records = []
    for line in (to / "train.jsonl").read_text().splitlines():
        record = json.loads(line)
        if positive_only:
            records.append({"image": record["image"], "positive": record["positive"]})
            continue
        named = record["positive"] + record["negative"]
        kept = {name for name in named if rng.rand() < known}
        records.append({"image": record["image"],
                        "positive": [c for c in record["positive"] if c in kept],
                        "negative": [c for c in record["negative"] if c in kept],
                        "unknown": [c for c in named if c not in kept]})
    (to / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return to


def config(tmp_path, root, name="run", *overrides):
    return load_experiment(None, [*TINY, f"data.root={root}", f"data.mask_dir={tmp_path / 'masks'}",
                                  f"data.cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'runs' / '{name}'}",
                                  f"name={name}", *overrides])


# 1: the feature cache follows the image files -------------------------------------------------------
def test_feature_cache_is_rebuilt_when_the_images_change_or_live_elsewhere(complete_world, tmp_path, caplog):
    root = tmp_path / "mine"
    shutil.copytree(complete_world, root)
    cfg = config(tmp_path, root)
    backbone = build_backbone(cfg)
    test = load_split("manifest", root, "test")
    first = build_feature_cache(test, backbone, str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO, logger="clipml"):
        assert build_feature_cache(test, backbone, str(tmp_path / "cache")).path == first.path
    assert "found" in caplog.text  # unchanged images: the cache is reused
    original = first.read(np.arange(len(test)), np.zeros(len(test), dtype=np.int64))[1]

    for item in test.items:  # flat grey, same file names
        path = root / item
        Image.new("RGB", Image.open(path).size, (128, 128, 128)).save(path)
    grey_split = load_split("manifest", root, "test")
    grey = build_feature_cache(grey_split, backbone, str(tmp_path / "cache"))
    assert grey.path != first.path
    grey_features = grey.read(np.arange(len(test)), np.zeros(len(test), dtype=np.int64))[1]
    assert not np.allclose(grey_features.float().numpy(), original.float().numpy(), atol=1e-3)

    # Another folder holding the same file names (here the same images) is another cache.
    elsewhere = tmp_path / "elsewhere" / "mine"
    shutil.copytree(complete_world, elsewhere)
    other = build_feature_cache(load_split("manifest", elsewhere, "test"), backbone, str(tmp_path / "cache"))
    assert other.path not in (first.path, grey.path)


# 2: the user's own partial labels are kept -------------------------------------------------------
def test_partial_labels_of_a_manifest_are_kept_as_they_are_by_default(complete_world, tmp_path, caplog):
    root = partial_copy(complete_world, tmp_path / "partial")
    own = load_split("manifest", root, "train")
    assert 0.10 < own.known.mean() < 0.22 and not own.labels_complete
    with caplog.at_level(logging.INFO, logger="clipml"):
        train_split, val_split, _ = build_splits(config(tmp_path, root))  # data.known_ratio: 0.1 (the default)
    kept = np.concatenate([train_split.labels, val_split.labels])
    order = np.argsort(train_split.items + val_split.items)
    np.testing.assert_array_equal(kept[order], own.labels[np.argsort(own.items)])
    assert "kept as they are" in caplog.text and not (tmp_path / "masks").exists()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clipml"):
        train_split, val_split, _ = build_splits(config(tmp_path, root, "run", "data.partial_labels=simulate"))
    known = np.concatenate([train_split.known, val_split.known]).mean()
    assert known < 0.5 * own.known.mean() and "on top of the dataset's own partial labels" in caplog.text

    # Complete labels (every class listed) still follow the simulated protocol.
    assert load_split("manifest", complete_world, "train").labels_complete
    train_split, _, _ = build_splits(config(tmp_path, complete_world))
    assert 0.05 < train_split.known.mean() < 0.15


def test_header_and_summary_say_which_labels_were_used(complete_world, tmp_path, capsys):
    root = partial_copy(complete_world, tmp_path / "partial", known=0.4)
    cfg = config(tmp_path, root)
    train_prompts([*TINY, f"data.root={root}", f"data.mask_dir={tmp_path / 'masks'}", "data.cache=false",
                   f"output_dir={tmp_path / 'runs' / '{name}'}", "name=run"])
    captured = capsys.readouterr()
    assert "own partial labels: keep" in captured.err  # the header, before the data is read
    summary = json.loads((Path(cfg.run_dir()) / "summary.json").read_text())
    own = load_split("manifest", root, "train").known.mean()
    assert summary["training_labels"]["source"] == "own partial labels, kept"
    assert summary["training_labels"]["known"] == pytest.approx(100 * own, abs=0.05)
    line = f"training labels: {100 * own:.1f}% of training labels known (the dataset's own partial labels kept as they are)"
    assert line in captured.out and line.split(": ", 1)[1] in (Path(cfg.run_dir()) / "summary.md").read_text()


# 3: classes a record leaves out ----------------------------------------------------------------
def test_unlisted_classes_are_a_required_choice(complete_world, tmp_path):
    root = partial_copy(complete_world, tmp_path / "positives", positive_only=True)
    with pytest.raises(DataError, match=r"train\.jsonl line 1: .*data\.options\.unlisted=unknown"):
        load_split("manifest", root, "train")
    unknown = load_split("manifest", root, "train", unlisted="unknown")
    assert (unknown.labels != UNKNOWN).sum() == (unknown.labels == 1).sum() > 0  # only the positives known
    assert not unknown.labels_complete
    negative = load_split("manifest", root, "train", unlisted="negative")
    assert negative.known.all() and negative.labels_complete
    assert load_split("manifest", complete_world, "train").known.all()  # every class listed: no choice needed


def test_a_test_split_without_negatives_is_named(complete_world, tmp_path, caplog):
    root = tmp_path / "positives"
    shutil.copytree(complete_world, root)
    records = [json.loads(line) for line in (root / "test.jsonl").read_text().splitlines()]
    (root / "test.jsonl").write_text("".join(json.dumps({"image": r["image"], "positive": r["positive"]}) + "\n"
                                             for r in records))
    with caplog.at_level(logging.WARNING, logger="clipml"):
        build_splits(config(tmp_path, root, "run", "data.options.unlisted=unknown"))
    assert "test labels are unknown" in caplog.text and "the mAP scored 0 of " in caplog.text
    assert "without a known negative" in caplog.text and "data.options.unlisted=negative" in caplog.text


def test_print_config_documents_the_new_defaults(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_prompts(["--print-config"])
    out = capsys.readouterr().out
    lines = {line.split(" = ")[0]: line for line in out.splitlines()}
    assert "keep" in lines["data.partial_labels"] and "simulate" in lines["data.partial_labels"]
    assert "unlisted" in lines["data.options"]


# 4: the run identity covers the data ---------------------------------------------------------------
def test_resume_refuses_a_run_trained_on_other_labels(complete_world, tmp_path):
    root = partial_copy(complete_world, tmp_path / "partial", known=0.4)
    cfg = config(tmp_path, root)
    train(cfg)
    records = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    for record in records:  # the user labels more: every unknown becomes a negative
        record["negative"] += record.pop("unknown")
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ConfigError, match=r"other data: train split labels, training part labels") as refused:
        train(cfg)
    assert "--no-resume" in str(refused.value)
    # Started over on the complete labels, all of them kept.
    complete = config(tmp_path, root, "run", "data.known_ratio=1")
    labels = train(complete, resume=False)["training_labels"]
    assert labels == {"source": "complete labels, all kept", "known": 100.0}

    # A run folder from before the data was recorded is refused too, not silently resumed.
    (Path(cfg.run_dir()) / "data.json").unlink()
    with pytest.raises(ConfigError, match="does not record the data it was trained on"):
        train(complete)


def test_sweep_refuses_p_on_kept_partial_labels_and_finished_runs_on_edited_data(complete_world, tmp_path):
    root = partial_copy(complete_world, tmp_path / "partial", known=0.6)
    method = tmp_path / "sdm_csp.yaml"
    save_config(config(tmp_path, root), method)
    spec = dict(configs=[str(method)], proportions=(0.5,), seeds=(0,), name="mine", output_dir=str(tmp_path / "sweeps"))
    with pytest.raises(ConfigError, match=r"already partial .* --set data\.partial_labels=simulate"):
        run_sweep(SweepSpec(**spec))  # kept as they are, every p would train the same run
    simulate = SweepSpec(**spec, overrides=["data.partial_labels=simulate"])
    assert run_sweep(simulate).trained == 1
    assert run_sweep(simulate).reused == 1
    test = (root / "test.jsonl").read_text().splitlines()
    (root / "test.jsonl").write_text("\n".join(test[1:] + test[:1]) + "\n")  # another image order
    with pytest.raises(ConfigError, match="other data: test split images, test split labels, test split image files"):
        run_sweep(simulate)


# 5: only keys that change results decide whether a run resumes -------------------------------------
def test_resume_ignores_keys_that_do_not_change_results(complete_world, tmp_path, caplog):
    cfg = config(tmp_path, complete_world, "run", "data.known_ratio=0.5")
    train(cfg)
    saved = yaml.safe_load((Path(cfg.run_dir()) / "config.yaml").read_text())
    same = config(tmp_path, complete_world, "run", "data.known_ratio=0.5", "data.workers=1", "device=cpu", "data.eval_batch_size=7",
                  "data.cache_device=cpu", f"data.cache_dir={tmp_path / 'elsewhere'}")
    assert config_differences(saved, same) == {}
    with caplog.at_level(logging.INFO, logger="clipml"):
        train(config(tmp_path, complete_world, "run", "data.known_ratio=0.5", "device=cpu", "data.eval_batch_size=7"))
    assert "resuming" in caplog.text
    changed = config(tmp_path, complete_world, "run", "data.known_ratio=0.5", "optim.lr=0.5", "data.workers=1")
    assert config_differences(saved, changed) == {"optim.lr": (0.01, 0.5)}
    with pytest.raises(ConfigError, match=r"another config \(optim\.lr: 0\.01 -> 0\.5\)"):
        train(changed)
    assert config_to_dict(changed)["data"]["workers"] == 1
