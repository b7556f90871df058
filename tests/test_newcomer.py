"""What a newcomer hit on a fresh clone, by feature: one clear line instead of tracebacks, bad files
that can be skipped, config that can be reset and printed, one epoch numbering, honest timings,
rank-0 output, named validation splits, progress bars, and the tools' extra options."""

import contextlib
import csv
import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from clipml.backbones import load_backbone, register_test_models
from clipml.cli import (complete_labels, export_onnx, predict, sweep, train_prompts, visualize_attention,
                        zero_shot_eval)
from clipml.config import _field_names, _schema_keys, load_config
from clipml.methods import METHODS
from clipml.data import load_split, readable_names
from clipml.data.transforms import eval_transform
from clipml.engine.builders import build_backbone, build_splits
from clipml.engine.cache import build_feature_cache
from clipml.engine.checkpoint import load_training_state, read_prompt_checkpoint, save_training_state
from clipml.engine.train import train
from clipml.errors import BackboneError, ConfigError, DataError, TrainingInterrupted
from clipml.experiment import DataConfig, ExperimentConfig, load_experiment
from clipml.lab.world import write_synthetic_dataset
from conftest import TINY_RUN, tiny_run
from clipml.metrics import average_precision

pytestmark = pytest.mark.integration  # trains end to end: left out of the quick subset

REPO = Path(__file__).resolve().parent.parent
TINY = [*TINY_RUN, "data.val_fraction=0.25", "optim.epochs=2"]


def tiny_args(tmp_path, name, *overrides):
    """Command-line arguments of train_prompts / zero_shot_eval for a tiny synthetic run."""
    return ["--config", str(REPO / "clipml" / "assets" / "demo.yaml"),
            *tiny_run(tmp_path, name, "data.val_fraction=0.25", "optim.epochs=2", "data.cache=false",
                      "data.options={}", "data.options.num_images=96", *overrides)]


def tiny_config(tmp_path, name, *overrides):
    return load_experiment(None, tiny_run(tmp_path, name, "data.val_fraction=0.25", "optim.epochs=2",
                                          "data.options={num_images: 96}", *overrides))


def interrupt_at(wanted):
    """A progress callable that presses Ctrl-C when the bar `wanted` starts."""
    def progress(iterable, desc, **_):
        if desc == wanted:
            raise KeyboardInterrupt
        return iterable
    return progress


def state_after_interrupt(cfg):
    """Train `cfg` until Ctrl-C at the start of its second epoch; (state file, its contents)."""
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=interrupt_at("epoch 2/2"))
    state_path = Path(cfg.run_dir()) / "state.pt"
    return state_path, load_training_state(state_path)


def run_cli(tool, args, capsys):
    """(exit code, stdout, stderr) of one tool call."""
    code = 0
    try:
        tool(args)
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A manifest dataset of JPEGs: 24 train and 8 test images, 32 px."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("world"), {"train": 24, "test": 8}, seed=5, image_size=32)
    return root


def damaged_copy(world, tmp_path, how="garbage"):
    """A copy of the manifest world whose first test image is damaged."""
    import shutil

    root = tmp_path / "world"
    shutil.copytree(world, root)
    first = json.loads((root / "test.jsonl").read_text().splitlines()[0])["image"]
    path = root / first
    data = path.read_bytes()
    path.write_bytes(b"this is not an image" if how == "garbage" else data[: len(data) // 3])
    return root, first


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny finished run through the command line: (tmp folder, summary, stdout, scores path)."""
    tmp = tmp_path_factory.mktemp("trained")
    scores = tmp / "scores.csv"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train_prompts([*tiny_args(tmp, "run"), "--export-scores", str(scores)])
    summary = json.loads((tmp / "runs" / "run" / "summary.json").read_text())
    return tmp, summary, out.getvalue(), scores


# devices ------------------------------------------------------------------------------------------
def test_device_check_is_one_clear_error_for_every_tool(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(image)
    calls = {
        "train_prompts": (train_prompts, tiny_args(tmp_path, "dev")),
        "zero_shot_eval": (zero_shot_eval, tiny_args(tmp_path, "dev")),
        "predict": (predict, ["--classes", "cat,dog", str(image)]),
        "visualize_attention": (visualize_attention, ["--checkpoint", str(tmp_path / "none.safetensors"), str(image)]),
        "sweep": (sweep, [str(REPO / "clipml" / "assets" / "demo.yaml"), "--set", "optim.epochs=1"]),
    }
    for name, (tool, args) in calls.items():
        for device, message in (("cuda", "CUDA is not available"), ("gpu", "'gpu' is not a device name")):
            code, out, err = run_cli(tool, [*args, "--device", device], capsys)
            assert code == 2, name
            assert err.count("\n") == 1 and err.startswith("error: device") and message in err, (name, err)
    with pytest.raises(ConfigError, match="cuda:3"):
        load_backbone("toy", device="cuda:3")


# images that cannot be decoded --------------------------------------------------------------------
@pytest.mark.parametrize("cache", [False, True])
def test_a_corrupt_image_is_one_error_naming_it(world, tmp_path, capsys, cache):
    root, bad = damaged_copy(world, tmp_path)
    args = tiny_args(tmp_path, "bad", "data.dataset=manifest", "data.options={}", f"data.root={root}", "data.known_ratio=1.0",
                     "data.workers=1", f"data.cache={str(cache).lower()}", f"data.cache_dir={tmp_path / 'cache'}")
    code, out, err = run_cli(train_prompts, args, capsys)
    lines = [line for line in err.splitlines() if line.startswith("error")]
    assert code == 2 and len(lines) == 1 and bad in lines[0]
    assert "Traceback" not in err and "worker" not in err
    assert "data.options.on_undecodable_image=skip" in lines[0]


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_undecodable_images_can_be_skipped(world, tmp_path, caplog, how):
    root, bad = damaged_copy(world, tmp_path, how)
    with caplog.at_level(logging.WARNING, logger="clipml"):
        split = load_split("manifest", root, "test", on_undecodable_image="skip")
    assert len(split) == 7 and bad not in split.items and split.skipped_images == [bad]
    assert bad in caplog.text
    assert len(load_split("manifest", root, "test")) == 8  # "error" (default) reads nothing now
    with pytest.raises(ConfigError, match="data.options.on_undecodable_image must be one of"):
        load_split("manifest", root, "test", on_undecodable_image="ignore")


# corrupt weights ----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".bin", ".pt", ".safetensors"])
def test_corrupt_weights_are_a_backbone_error_naming_the_file(tmp_path, suffix):
    path = tmp_path / f"rand{suffix}"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(BackboneError) as error:
        load_backbone(f"open_clip:clipml-tiny-vit@{path}")
    assert str(path) in str(error.value) and "weights_only" not in str(error.value)
    assert "\n" not in str(error.value)


def test_corrupt_transformers_folder_never_suggests_unpickling(tmp_path, capsys):
    from transformers import CLIPConfig, CLIPModel

    CLIPModel(CLIPConfig(**register_test_models()["clipml-tiny-hf"])).save_pretrained(tmp_path / "hf")
    for file in (tmp_path / "hf").glob("*.safetensors"):
        file.unlink()
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes(np.random.default_rng(1).bytes(3000))
    with pytest.raises(BackboneError) as error:
        load_backbone(f"hf:{tmp_path / 'hf'}")
    assert str(tmp_path / "hf") in str(error.value) and "weights_only" not in str(error.value)
    (tmp_path / "x.bin").write_bytes(np.random.default_rng(2).bytes(3000))
    capsys.readouterr()
    code, _, err = run_cli(train_prompts, tiny_args(tmp_path, "w", f"backbone.spec=open_clip:clipml-tiny-vit@{tmp_path / 'x.bin'}"), capsys)
    lines = err.splitlines()
    assert code == 2 and lines[-1].startswith(f"error: weights file {tmp_path / 'x.bin'} cannot be read")
    assert "Traceback" not in err and "weights_only" not in err


# interruption (Ctrl-C) ----------------------------------------------------------------------------
def test_ctrl_c_says_what_was_saved_and_how_to_resume(tmp_path, capsys, monkeypatch, caplog):
    import clipml.cli as cli

    monkeypatch.setattr(cli, "_progress", interrupt_at("epoch 2/2"))
    try:
        code, out, err = run_cli(train_prompts, tiny_args(tmp_path, "ctrlc"), capsys)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped as a KeyboardInterrupt traceback")
    assert code == 130 and err.splitlines()[-1] == (
        f"interrupted: {tmp_path / 'runs' / 'ctrlc'} holds epochs 1-1 of 2 (state.pt, last.safetensors, "
        "best.safetensors); the same command resumes at epoch 2 (--no-resume starts over)")
    assert "Traceback" not in err and out == ""
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="clipml"):
        code, out, err = run_cli(train_prompts, tiny_args(tmp_path, "ctrlc"), capsys)
    assert code == 0 and "after epoch 1" in caplog.text and "test, zero-shot" in out


def test_ctrl_c_before_any_epoch(tmp_path):
    with pytest.raises(TrainingInterrupted, match="before the first epoch was saved"):
        train(tiny_config(tmp_path, "early"), progress=interrupt_at("eval"))


# config options that can be cleared ---------------------------------------------------------------
def test_data_options_can_be_cleared_and_follow_a_dataset_switch(world, caplog):
    demo = str(REPO / "clipml" / "assets" / "demo.yaml")
    assert load_experiment(demo, ["data.options={}"]).data.options == {}
    with pytest.raises(ConfigError, match=re.escape("give an empty mapping: data.options={}")):
        load_experiment(demo, ["data.options=null"])
    with caplog.at_level(logging.WARNING, logger="clipml"):
        cfg = load_experiment(demo, ["data.dataset=manifest", f"data.root={world}"])
    assert cfg.data.options == {} and "dropped data.options num_images" in caplog.text  # and preset
    assert len(build_splits(cfg)[2]) == 8
    kept = load_experiment(demo, ["data.dataset=manifest", "data.options.unlisted=unknown"])
    assert kept.data.options == {"unlisted": "unknown"}
    given = load_experiment(demo, ["data.dataset=manifest", "data.options.num_images=5"])
    assert given.data.options == {"num_images": 5}  # given on the command line: its own error later
    in_file = yaml.safe_load(open(demo))["data"]["options"]
    assert in_file and load_experiment(demo, ["data.dataset=synthetic"]).data.options == in_file


# error hints --------------------------------------------------------------------------------------
def _hinted_override(message):
    """The key=value a hint names."""
    return re.search(r"\b([a-z_]+(?:\.[a-z_]+)+=\S+?)[;,)]?(?:\s|$)", message).group(1)


def test_every_hint_names_the_key_path_and_following_it_works(world, tmp_path):
    root, bad = damaged_copy(world, tmp_path)
    (root / json.loads((root / "train.jsonl").read_text().splitlines()[0])["image"]).unlink()
    base = ["data.dataset=manifest", f"data.root={root}", "data.known_ratio=1.0", *TINY]
    with pytest.raises(DataError) as missing:
        build_splits(load_experiment(None, base))
    hint = _hinted_override(str(missing.value))
    assert hint == "data.options.on_missing_image=skip"
    cfg = load_experiment(None, [*base, hint])
    source_error = None
    try:
        build_feature_cache(build_splits(cfg)[2], build_backbone(cfg), str(tmp_path / "cache"), workers=1)
    except DataError as error:
        source_error = str(error)
    hint = _hinted_override(source_error)
    assert bad in source_error and hint == "data.options.on_undecodable_image=skip"
    train_split, _, test_split = build_splits(load_experiment(None, [*base, "data.options.on_missing_image=skip", hint]))
    assert len(test_split) == 7 and len(train_split) == 17
    with pytest.raises(BackboneError) as random_weights:
        load_backbone("hf:clipml-tiny-hf")
    hint = _hinted_override(str(random_weights.value))
    assert hint == "backbone.allow_random=true"
    assert build_backbone(load_config(ExperimentConfig, None, ["backbone.spec=hf:clipml-tiny-hf", hint]))


# failed downloads ---------------------------------------------------------------------------------
def test_a_failed_download_is_one_line_per_file(monkeypatch, tmp_path, caplog, capfd):
    """The hub's own retry loop runs (its waits skipped) against a closed local port."""
    import huggingface_hub.constants as hub
    import huggingface_hub.utils._http as http
    import open_clip

    register_test_models()
    monkeypatch.setattr(http.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(hub, "HUGGINGFACE_CO_URL_TEMPLATE", "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "clipml-tiny-vit", {"unreachable": {"hf_hub": "clipml/none/"}})
    with caplog.at_level(logging.WARNING), pytest.raises(BackboneError) as error:
        load_backbone("open_clip:clipml-tiny-vit@unreachable")
    assert "\n" not in str(error.value) and "backbone.spec=open_clip:clipml-tiny-vit@/path/" in str(error.value)
    messages = [record.getMessage() for record in caplog.records]
    assert all(message.startswith("download failed: http://127.0.0.1:9/clipml/none/") for message in messages)
    assert 1 <= len(messages) == len(set(messages))  # one line per file tried
    assert "Retry" not in capfd.readouterr().err


# --print-config -----------------------------------------------------------------------------------
def test_print_config_shows_every_key_with_default_and_help(tmp_path, capsys):
    code, out, _ = run_cli(train_prompts, [*tiny_args(tmp_path, "cfg"), "optim.epochs=7", "--print-config"], capsys)
    assert code == 0 and not (tmp_path / "runs").exists()
    lines = {line.split(" = ")[0]: line for line in out.splitlines()[1:]}
    leaves = [key for key in _schema_keys(ExperimentConfig, "")
              if not any(other.startswith(key + ".") for other in _schema_keys(ExperimentConfig, ""))]
    method = lines["model.method"].split(" = ")[1].split()[0].strip('"')
    own = METHODS[method].options  # the selected method's own section, model.<method>.*
    leaves += [f"model.{method}.{name}" for name in _field_names(own)] if own else []
    assert sorted(lines) == sorted(leaves)
    for key, line in lines.items():
        match = re.fullmatch(r"(\S+) = (.+?)\s+\[(.+?)\]  (.+)", line)
        assert match and match.group(4).strip(), line
    assert re.fullmatch(r"optim.epochs = 7\s+\[50\]  .+", lines["optim.epochs"])
    assert '"num_images": 96' in lines["data.options"]


# epoch numbering ----------------------------------------------------------------------------------
def test_epochs_are_counted_from_one_everywhere(trained):
    tmp, summary, out, _ = trained
    run = tmp / "runs" / "run"
    history = [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert history == [record["epoch"] for record in summary["history"]] == [1, 2]
    best = max(summary["history"], key=lambda record: record["val"]["mAP"])["epoch"]
    assert summary["best_epoch"] == best and f"best epoch {best}" in out
    assert f"best epoch {best}," in (run / "summary.md").read_text()
    assert read_prompt_checkpoint(run / "best.safetensors")[1]["metrics"]["epoch"] == best
    assert read_prompt_checkpoint(run / "last.safetensors")[1]["metrics"]["epoch"] == 2


def test_a_state_saved_with_zero_based_epochs_resumes_counted_from_one(tmp_path):
    cfg = tiny_config(tmp_path, "old")
    state_path, state = state_after_interrupt(cfg)
    state["epoch"] = state.pop("epochs_done") - 1  # as the state files before this change
    state["history"] = json.dumps([dict(r, epoch=r["epoch"] - 1) for r in json.loads(state["history"])])
    state["best"] = json.dumps(dict(json.loads(state["best"]), epoch=0))
    save_training_state(state_path, state)
    summary = train(cfg)
    assert [record["epoch"] for record in summary["history"]] == [1, 2] and summary["best_epoch"] in (1, 2)


# recorded training time ---------------------------------------------------------------------------
def test_rerunning_keeps_the_recorded_training_time(tmp_path):
    cfg = tiny_config(tmp_path, "timed", "optim.epochs=1")
    train(cfg)
    path = Path(cfg.run_dir()) / "summary.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), seconds=87.3)))  # as if it had taken longer
    again = train(cfg)
    assert again["seconds"] == 87.3 and json.loads(path.read_text())["seconds"] == 87.3
    assert "seconds_this_call" in again


def test_a_resumed_run_adds_the_new_time(tmp_path):
    cfg = tiny_config(tmp_path, "resumed")
    state_path, state = state_after_interrupt(cfg)
    assert state["seconds"] > 0
    save_training_state(state_path, dict(state, seconds=1000.0))
    summary = train(cfg)
    assert abs(summary["seconds"] - (1000.0 + summary["seconds_this_call"])) <= 0.11


# output of several processes ----------------------------------------------------------------------
def test_only_rank_zero_prints(trained, capsys, monkeypatch, caplog):
    """The CLI reads its rank as torchrun gives it (RANK); here one process plays rank 1."""
    tmp, _, printed, _ = trained
    assert printed.count("zero-shot AP") == 1  # the per-class table, once
    monkeypatch.setenv("RANK", "1")
    with caplog.at_level(logging.NOTSET):
        code, out, err = run_cli(train_prompts, tiny_args(tmp, "run"), capsys)  # the finished run, read back
    assert code == 0 and out == "" and err == ""
    assert not [record for record in caplog.records if record.name.startswith("clipml")]
    monkeypatch.setenv("RANK", "0")
    code, out, err = run_cli(train_prompts, tiny_args(tmp, "run"), capsys)
    assert code == 0 and out.count("zero-shot AP") == 1 and "run folder" in err


# zero_shot_eval's splits --------------------------------------------------------------------------
def test_zero_shot_eval_names_the_split_and_scores_the_carved_part(trained, capsys):
    tmp, summary, printed, _ = trained
    code, out, _ = run_cli(zero_shot_eval, [*tiny_args(tmp, "run"), "--split", "carved-val"], capsys)
    assert code == 0 and "the validation split train_prompts selects epochs on: 24 images carved from split 'train'" in out
    mAP = float(re.search(r"mAP (\d+\.\d+)", out).group(1))
    assert mAP == pytest.approx(summary["zero_shot_val"]["mAP"], abs=0.006)  # training's zero-shot val
    code, out, _ = run_cli(zero_shot_eval, [*tiny_args(tmp, "run"), "--split", "val"], capsys)
    assert code == 0 and "the dataset's own split 'val'" in out
    assert "carved from split 'train'" in summary["splits"]["val"] and "carved from split 'train'" in printed


# progress bars ------------------------------------------------------------------------------------
def test_progress_bars_on_a_pseudo_terminal(tmp_path):
    """stderr on a pseudo-terminal that reports no size (as `script` makes without a terminal)."""
    master, slave = os.openpty()
    code = f"from clipml.cli import train_prompts; train_prompts({tiny_args(tmp_path, 'bars', 'optim.epochs=1')!r})"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    chunks = []

    def read():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    assert process.wait() == 0
    reader.join()
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert re.search(r"epoch 1/1: +\d+%", text) and re.search(r"eval: +\d+%", text), text[-2000:]


# summaries, exports and the tools' extra options --------------------------------------------------
def test_summary_has_per_class_ap_and_the_export_matches_it(trained):
    tmp, summary, printed, scores = trained
    cfg = tiny_config(tmp, "run")
    test_split = build_splits(cfg)[2]
    classes = readable_names(test_split)
    rows = list(csv.DictReader(scores.open()))
    assert len(rows) == len(test_split) * len(classes)
    assert [row["image"] for row in rows[:: len(classes)]] == test_split.items
    logits = np.array([float(row["logit"]) for row in rows]).reshape(len(test_split), len(classes))
    labels = np.array([int(row["label"]) for row in rows]).reshape(logits.shape)
    np.testing.assert_array_equal(labels, test_split.labels)
    ap = average_precision(logits, labels)
    assert list(summary["test_ap"]) == classes
    for name, value in zip(classes, ap):
        assert summary["test_ap"][name] == (None if np.isnan(value) else pytest.approx(100 * value, abs=2e-3))
    assert f"{classes[0]}" in printed and "zero-shot AP" in printed
    assert "| class | test AP | zero-shot AP |" in (tmp / "runs" / "run" / "summary.md").read_text()


def test_zero_shot_predict_without_a_checkpoint(tmp_path):
    """Against open_clip's own encode_image / encode_text of the toy CLIP."""
    import open_clip

    write_synthetic_dataset(tmp_path / "w", {"test": 3}, seed=2)
    images = sorted((tmp_path / "w" / "images" / "test").glob("*.jpg"))
    classes = ["sun", "moon", "tree", "boat"]
    output = tmp_path / "p.json"
    predict(["--classes", ",".join(classes), "--backbone", "toy", "--device", "cpu", *map(str, images),
             "--output", str(output)])
    records = json.loads(output.read_text())
    backbone = load_backbone("toy")
    model = backbone.model
    tokens = open_clip.tokenize([f"a photo of a {name}." for name in classes], context_length=backbone.context_length)
    transform = eval_transform(backbone.image_size, backbone.mean, backbone.std)
    with torch.no_grad():
        text = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
        pixels = torch.stack([transform(Image.open(path).convert("RGB")) for path in images])
        image = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        expected = (100 * image @ text.T).softmax(dim=-1).numpy()
    for record, row in zip(records, expected):
        np.testing.assert_allclose([record["probabilities"][name] for name in classes], row, atol=2e-4)
    with pytest.raises(SystemExit):
        predict([str(images[0])])  # neither a checkpoint nor classes


def test_visualize_several_images_in_one_call(tmp_path, capsys, monkeypatch):
    from clipml.config import config_to_dict
    from clipml.engine import checkpoint as checkpoint_module
    from clipml.engine.checkpoint import save_prompt_checkpoint
    from clipml.model import MultiLabelCLIP

    cfg = load_config(ExperimentConfig, None, [*TINY, "backbone.image_size=64"])
    path = tmp_path / "model.safetensors"
    save_prompt_checkpoint(path, MultiLabelCLIP(build_backbone(cfg), ["cat", "dog", "car"], cfg.model), config_to_dict(cfg))
    for name in ("one", "two"):
        Image.new("RGB", (48, 32), name == "one" and "red" or "blue").save(tmp_path / f"{name}.png")
    loads = []
    original = checkpoint_module.load_file  # every read of a checkpoint file goes through it
    monkeypatch.setattr(checkpoint_module, "load_file", lambda *a, **k: loads.append(a) or original(*a, **k))
    code, out, _ = run_cli(visualize_attention, ["--checkpoint", str(path), str(tmp_path / "one.png"),
                                                 str(tmp_path / "two.png"), "--output", str(tmp_path / "maps"),
                                                 "--top-k", "2", "--device", "cpu"], capsys)
    assert code == 0 and len(loads) == 1
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["one_attention.png", "two_attention.png"]
    assert out.count("wrote ") == 2 and len(out.splitlines()) == 6


TOOLS = {"train_prompts": train_prompts, "zero_shot_eval": zero_shot_eval, "predict": predict,
         "sweep": sweep, "visualize_attention": visualize_attention, "complete_labels": complete_labels,
         "export_onnx": export_onnx}


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_every_help_shows_defaults_and_a_device_flag(name, capsys):
    code, out, _ = run_cli(TOOLS[name], ["--help"], capsys)
    assert code == 0 and "--device" in out
    text = out[out.index("options:"):]
    entries = re.split(r"\n  (?=-)", text)[1:]
    for entry in entries:
        flag = entry.split()[0].rstrip(",")
        if flag in ("-h", "--help", "--no-resume", "--print-config"):
            continue
        words = " ".join(entry.split())
        assert "(default: " in words or "(required)" in words, (name, entry)


def test_gitignore_covers_the_default_output_folders():
    ignored = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    defaults = DataConfig()
    for folder in (defaults.mask_dir, defaults.cache_dir, ExperimentConfig().output_dir):
        top = Path(folder).parts[0]
        assert f"{top}/" in ignored or f"/{top}/" in ignored, top
