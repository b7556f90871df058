"""What a training run writes beside its results: the offline HTML report (checked against
scikit-learn) and TensorBoard scalars (read back and compared with log.jsonl)."""

import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve

from clipml.cli import report as report_cli
from clipml.config import config_to_dict
from clipml.data import load_split
from clipml.engine.tensorboard import summary_writer_class
from clipml.engine.train import train
from clipml.errors import ConfigError, DataError
from clipml.experiment import config_differences
from clipml.report import thin_curve, write_report
from test_engine import tiny_config

IMAGES = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run scored with raw AP, so scikit-learn's average_precision_score is its oracle."""
    tmp_path = tmp_path_factory.mktemp("outputs")
    cfg = tiny_config(tmp_path, "name=outputs", "optim.epochs=2", "eval.ap=raw", f"train.report_images={IMAGES}",
                      "train.tensorboard=auto")
    summary = train(cfg, resume=False)
    return cfg, summary, Path(cfg.run_dir())


class Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags, self.text = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag, **attrs):
        return [a for t, a in self.tags if t == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def page(run_dir: Path) -> Elements:
    return Elements((run_dir / "report.html").read_text())


def scores(run_dir: Path):
    """(classes, logits [N, C], labels [N, C]) from the known entries the run saved (every entry
    of this complete test split)."""
    with np.load(run_dir / "test_scores.npz") as arrays:
        shape, rows, cols = tuple(arrays["shape"]), arrays["rows"], arrays["cols"]
        assert rows.size == shape[0] * shape[1]
        logits, labels = np.full(shape, np.nan, dtype=np.float32), np.full(shape, -1, dtype=np.int8)
        logits[rows, cols], labels[rows, cols] = arrays["logits"], arrays["labels"]
        return list(arrays["classes"]), logits, labels


def test_training_writes_a_well_formed_self_contained_report(run):
    _, _, run_dir = run
    text = (run_dir / "report.html").read_text()
    ElementTree.fromstring(text.split("\n", 1)[1])  # well-formed markup after the doctype
    elements = Elements(text)
    without_data = re.sub(r'"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+"', '""', text)
    assert "http" not in without_data and "//" not in without_data.replace("<!--", "")
    for tag, attrs in elements.tags:
        assert tag not in ("script", "link", "iframe"), tag
        for key in ("src", "href"):
            assert key not in attrs or attrs[key].startswith("data:image/"), (tag, attrs.get(key, "")[:40])


def test_one_bar_per_class_at_its_ap(run):
    _, summary, run_dir = run
    classes, logits, labels = scores(run_dir)
    bars = {bar["data-label"]: bar for bar in page(run_dir).find("rect", **{"class": "bar"}) if "data-label" in bar}
    with_positive = [name for c, name in enumerate(classes) if (labels[:, c] == 1).any()]
    assert sorted(bars) == sorted(with_positive)
    for c, name in enumerate(classes):
        if name in bars:
            expected = 100 * average_precision_score(labels[:, c] == 1, logits[:, c])
            assert float(bars[name]["data-value"]) == pytest.approx(expected, abs=1e-3)
            assert float(bars[name]["data-value"]) == summary["test_ap"][name]
            assert float(bars[name]["width"]) == pytest.approx(expected * 4.2, abs=0.01)  # 420 px for 100 %
    ticks = {tick["data-label"]: float(tick["data-value"])
             for tick in page(run_dir).find("line", **{"class": "reference"})}
    assert ticks == {name: value for name, value in summary["zero_shot_test_ap"].items() if value is not None}


def test_precision_recall_curves_are_scikit_learns(run):
    _, _, run_dir = run
    classes, logits, labels = scores(run_dir)
    lines = {line["data-label"]: line["points"] for line in page(run_dir).find("polyline", **{"class": "line"})}
    for c in [c for c, name in enumerate(classes) if (labels[:, c] == 1).any()][:5]:
        precision, recall, _ = precision_recall_curve(labels[:, c] == 1, logits[:, c])
        points = np.array([[float(v) for v in point.split(",")] for point in lines[classes[c]].split()])
        np.testing.assert_allclose(points, np.stack([recall, precision], axis=1), atol=1e-6)


def test_breakdown_bars_show_the_summarys_numbers(run):
    _, summary, run_dir = run
    bars = page(run_dir).find("rect", **{"class": "bar", "data_series": "trained"})
    shown = {bar["data-group"].split(" (")[0]: float(bar["data-value"]) for bar in bars}
    details = summary["test_details"]
    expected = {name: value for key in ("mAP_by_labels", "mAP_by_size") if key in details
                for name, value in details[key].items() if value is not None}
    assert shown == expected and "1" in shown


def test_attention_figures_name_the_image_and_its_true_labels(run):
    cfg, _, run_dir = run
    elements = page(run_dir)
    figures = elements.find("figure")
    images = elements.find("img")
    assert len(figures) == len(images) == IMAGES
    assert all(image["src"].startswith("data:image/jpeg;base64,") for image in images)
    split = load_split(cfg.data.dataset, cfg.data.root, cfg.data.test_split, **cfg.data.options)
    text = "".join(elements.text)
    for figure in figures:
        index = split.items.index(figure["data-image"])
        true = [split.classes[c].replace("_", " ") for c in np.flatnonzero(split.labels[index] == 1)]
        assert f"{split.items[index]}; true labels: {', '.join(true)};" in text


def test_report_tool_rewrites_it_with_another_image_count(run, capsys):
    _, _, run_dir = run
    report_cli([str(run_dir), "--images", "1"])
    assert "report.html" in capsys.readouterr().out
    assert len(page(run_dir).find("img")) == 1
    report_cli([str(run_dir)])  # back to the run's train.report_images for the other tests
    assert len(page(run_dir).find("img")) == IMAGES


def test_report_without_matplotlib_keeps_the_charts_and_says_why_no_overlays(run, tmp_path, monkeypatch):
    _, _, run_dir = run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    elements = page(write_report(copy).parent)
    assert not elements.find("img") and elements.find("polyline")
    assert "attention overlays need matplotlib (pip install clipml[plot])" in " ".join(elements.text)


def test_report_false_writes_none_and_a_zero_shot_report_says_what_it_lacks(tmp_path):
    cfg = tiny_config(tmp_path, "name=plain", "model.method=zero_shot", "train.report=false")
    train(cfg, resume=False)
    run_dir = Path(cfg.run_dir())
    assert (run_dir / "summary.json").is_file() and not (run_dir / "report.html").exists()
    text = "".join(page(write_report(run_dir, images=1).parent).text)
    assert "nothing trained (no epochs)" in text
    assert "model.method zero_shot scores the pooled image feature: no spatial attention" in text


def test_report_of_an_unfinished_run_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="summary.json not found: the report needs a finished run"):
        write_report(tmp_path)


def test_long_curves_are_thinned_to_points_of_the_curve():
    rng = np.random.default_rng(0)
    labels = rng.random(5000) < 0.3
    precision, recall, _ = precision_recall_curve(labels, rng.normal(size=5000) + labels)
    thin_p, thin_r = thin_curve(precision, recall, max_points=300)
    assert len(thin_p) <= 300
    original = set(zip(precision.tolist(), recall.tolist()))
    assert set(zip(thin_p.tolist(), thin_r.tolist())) <= original
    assert (thin_p[0], thin_r[0], thin_p[-1], thin_r[-1]) == (precision[0], recall[0], 1.0, 0.0)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_chromium_renders_the_report(run, tmp_path):
    _, _, run_dir = run
    shot = tmp_path / "report.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2400",
                    (run_dir / "report.html").resolve().as_uri()], check=True, capture_output=True, timeout=120)
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1280)
    bar = np.all(np.abs(pixels.astype(int) - (0x1F, 0x77, 0xB4)) < 8, axis=2)  # the AP bars' blue
    assert bar.sum() > 1000


# TensorBoard ------------------------------------------------------------------------------------
def test_tensorboard_scalars_equal_log_jsonl_also_after_a_resume(run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, _, run_dir = run
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    expected = {"train/loss": [r["loss"] for r in records], "train/lr": [r["lr"] for r in records],
                **{f"val/{key}": [r["val"][key] for r in records] for key in records[0]["val"]}}

    def logged():
        events = EventAccumulator(str(run_dir / "tensorboard"))
        events.Reload()
        tags = events.Tags()["scalars"]
        assert all(len({e.step for e in events.Scalars(tag)}) == len(events.Scalars(tag)) for tag in tags)
        return {tag: [e.value for e in events.Scalars(tag)] for tag in tags}, \
            [e.step for e in events.Scalars("train/loss")]

    values, steps = logged()
    assert steps == [r["epoch"] for r in records] == [1, 2]
    assert set(values) == set(expected)
    for tag, numbers in expected.items():
        np.testing.assert_allclose(values[tag], numbers, rtol=1e-6, err_msg=tag)
    train(cfg, resume=True)  # read back: the history is written again, the older events purged
    assert logged()[0] == values


def test_tensorboard_true_without_the_package_stops_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    cfg = tiny_config(tmp_path, "name=board", "train.tensorboard=true")
    with pytest.raises(ConfigError, match=r"train.tensorboard=true, but TensorBoard cannot be imported .*"
                                          r"pip install tensorboard"):
        train(cfg, resume=False)
    assert not Path(cfg.run_dir()).exists()  # nothing read or written
    assert summary_writer_class("auto") is None and summary_writer_class(False) is None


def test_output_settings_do_not_change_the_experiment(tmp_path):
    cfg = tiny_config(tmp_path, "name=same")
    saved = config_to_dict(cfg)
    assert config_differences(saved, tiny_config(tmp_path, "name=same", "train.tensorboard=false",
                                                 "train.report=false", "train.report_images=0")) == {}
    assert config_differences(saved, tiny_config(tmp_path, "name=same", "optim.lr=0.5")) == {"optim.lr": (0.01, 0.5)}
    with pytest.raises(ConfigError, match="train.report_images must be >= 0, got -1"):
        tiny_config(tmp_path, "train.report_images=-1")
