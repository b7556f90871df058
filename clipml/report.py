"""A run's pictures in one offline HTML file (<run>/report.html): per-class AP, precision-recall
curves, mAP by labels per image and object size, the training curves, attention overlays on a
sample of test images with their true labels, and the config. Charts are inline SVG drawn by
clipml.svg (no matplotlib needed); the overlays are visualize.plot_attention's figures, inlined as JPEG,
and are left out with a note where matplotlib is missing."""

from __future__ import annotations

import base64
import io
import json
import logging
from html import escape
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import yaml

import clipml
from clipml import svg
from clipml.breakdown import LABEL_BUCKETS, SIZE_BUCKETS
from clipml.errors import ConfigError, DataError
from clipml.experiment import ExperimentConfig, saved_config
from clipml.metrics import precision_recall_curve

logger = logging.getLogger(__name__)
REPORT = "report.html"
MAX_CURVE_POINTS = 400  # per precision-recall curve; larger test splits are thinned to about this
TOP_K = 3  # classes per attention figure
ALL_CURVES = 100  # up to this many classes, one precision-recall curve each
CURVES = 8  # above it, the mean curve and this many best and worst classes
FIGURE_DPI = 80  # 240 px per attention panel: readable, and about 0.4 s per figure on one core

STYLE = """
body { font-family: sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 13px; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f3f3f3; } td.number { text-align: right; }
.grid { display: flex; flex-wrap: wrap; gap: 6px; } .note { color: #666; font-size: 13px; }
figure { margin: 12px 0; } figcaption { font-size: 13px; margin-bottom: 4px; }
figure img { max-width: 100%; } pre { background: #f7f7f7; padding: 8px; font-size: 12px; overflow-x: auto; }
"""


def write_report(run_dir: Union[str, Path], model=None, test_split=None, images: Optional[int] = None,
                 device: str = "cpu", curves: int = CURVES) -> Path:
    """Write <run_dir>/report.html from what the run saved (summary.json, config.yaml,
    test_scores.npz, prompts.safetensors) and return its path. Training passes its `model` and
    `test_split`; otherwise they are loaded (on `device`) for the attention overlays.
    `images`: test images with overlays (default: the config's train.report_images). `curves`:
    with more than ALL_CURVES classes (and more than twice `curves`), the report draws the mean
    precision-recall curve and the `curves` best and worst classes instead of one per class, and
    AP bars for those best and worst classes only."""
    if curves < 1:
        raise ConfigError(f"the number of best and worst precision-recall curves must be >= 1, got {curves}")
    run = Path(run_dir)
    summary = _read_json(run / "summary.json")
    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise DataError(f"{run} has no config.yaml: not a clipml run folder")
    config_text = config_path.read_text()
    cfg = saved_config(yaml.safe_load(config_text) or {}, source=str(config_path))
    count = cfg.train.report_images if images is None else images
    if count < 0:
        raise ConfigError(f"the number of attention images must be >= 0, got {count}")
    sections = [
        _header(summary),
        _section("Per-class AP (test)", _ap_bars(summary, curves)),
        _section("Precision-recall curves (test)", _pr_curves(run / "test_scores.npz", summary, curves)),
        _section("mAP by labels per image and by object size (test)", _breakdowns(summary)),
        _section("Training", _training(summary.get("history", []))),
        _section("Attention on test images", _attention(run, cfg, model, test_split, count, device)),
        _section("Config", f"<pre>{escape(config_text)}</pre>"),
    ]
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
            f"<title>{escape(str(summary.get('name', run.name)))}: clipml report</title>"
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(sections) + "\n</body></html>\n")
    path = run / REPORT
    path.write_text(page, encoding="utf-8")
    logger.info("report written to %s (%.0f kB)", path, path.stat().st_size / 1024)
    return path


def _read_json(path: Path) -> Dict[str, object]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} not found: the report needs a finished run "
                        "(summary.json is written at its end)") from None
    except ValueError as error:
        raise DataError(f"{path} is not valid JSON: {error}") from None


def _section(title: str, body: str) -> str:
    return f"<h2>{escape(title)}</h2>\n{body}"


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def _header(summary: Dict[str, object]) -> str:
    backbone = summary.get("backbone", {})
    best = f"best epoch {summary['best_epoch']}" if summary.get("best_epoch") else "nothing trained"
    facts = (f"{summary.get('method')} on {summary.get('dataset')}, {100 * float(summary.get('known_ratio', 1)):.0f}% "
             f"of training labels known; backbone {backbone.get('model')} ({backbone.get('weights')}); "
             f"loss {summary.get('loss')}; {summary.get('trainable_parameters')} trainable parameters; {best}; "
             f"{summary.get('seconds')} s. Written by clipml {clipml.__version__}.")
    keys = list(summary.get("test", {}))
    rows = [("validation (best epoch)", summary.get("val", {})), ("test", summary.get("test", {})),
            ("test, zero-shot CLIP", summary.get("zero_shot_test", {}))]
    table = ["<table><tr><th></th>" + "".join(f"<th>{escape(k)}</th>" for k in keys) + "</tr>"]
    for label, values in rows:
        cells = "".join(f'<td class="number">{values[k]:.2f}</td>' if k in values else "<td>-</td>" for k in keys)
        table.append(f"<tr><th>{escape(label)}</th>{cells}</tr>")
    table.append("</table>")
    coverage = summary.get("test_classes", {}).get("text")  # absent in summaries written before it
    notes = _items({**summary.get("splits", {}), **({"test mAP": coverage} if coverage else {}),
                    **summary.get("evaluation", {})})
    return (f"<h1>{escape(str(summary.get('name')))}</h1>\n<p>{escape(facts)}</p>\n" + "\n".join(table)
            + f"\n<ul>{notes}</ul>")


def _items(named: Dict[str, object]) -> str:
    return "".join(f"<li>{escape(name)}: {escape(str(text))}</li>" for name, text in named.items())


def _ap_bars(summary: Dict[str, object], curves: int) -> str:
    ap, zero_shot = summary.get("test_ap", {}), summary.get("zero_shot_test_ap", {})
    if not ap:
        return _note("summary.json has no per-class AP")
    names = list(ap)
    shown_only = ""
    if len(names) > max(ALL_CURVES, 2 * curves):  # thousands of classes: the best and worst as the curves
        ranked = sorted((ap[name], name) for name in names if ap[name] is not None)
        names = [name for _, name in ranked[-curves:][::-1]] + [name for _, name in ranked[:curves]]
        shown_only = (f"Shown are the {curves} best and {curves} worst of {len(ap):,} classes "
                      "(clipml-report --curves K changes how many; summary.json has them all). ")
    rows = [(name, ap[name], zero_shot.get(name)) for name in names]
    return (svg.horizontal_bars(rows, "trained", "zero-shot CLIP")
            + _note(shown_only + "AP in % per class; n/a: not scored, without a known positive or a known negative "
                    "in the test split (" + str(summary.get("test_classes", {}).get("text", "")) + ")."))


def _pr_curves(path: Path, summary: Dict[str, object], curves: int) -> str:
    if not path.is_file():
        return _note(f"this run saved no {path.name} (runs trained before clipml wrote it): no curves")
    classes, by_class = read_score_arrays(path)
    ap = summary.get("test_ap", {})
    with_positive = [c for c, (_, positive) in enumerate(by_class) if positive.any()]
    capped = len(with_positive) > max(ALL_CURVES, 2 * curves)
    if capped:  # thousands of classes: the mean curve and the k best and worst classes
        ranked = sorted((ap[classes[c]], c) for c in with_positive if ap.get(classes[c]) is not None)
        shown = [c for _, c in ranked[-curves:][::-1]] + [c for _, c in ranked[:curves]]
    else:
        shown = with_positive
    plots = [] if not capped else [_mean_curve(classes, by_class, ap)]
    for column in shown:
        name = classes[column]
        precision, recall = thin_curve(*precision_recall_curve(*by_class[column]))
        value = ap.get(name)
        title = name if value is None else f"{name} (AP {value:.1f})"
        plots.append(svg.line_plot([(name, recall, precision)], title, "recall", "precision", (0.0, 1.0),
                                   (0.0, 1.0), width=230, height=200, legend=False))
    note = ("Precision against recall of the trained model at every distinct score (scikit-learn's convention), "
            "over each class's known test entries; the titles' AP is the run's: "
            + str(summary.get("evaluation", {}).get("AP", "")))
    if capped:
        note = (f"{len(with_positive):,} classes have a known positive: shown are the mean curve over the scored "
                f"classes and the {curves} best and {curves} worst classes by AP (clipml-report --curves K "
                "changes how many). " + note)
    return f'<div class="grid">{"".join(plots)}</div>' + _note(note)


MEAN_RECALLS = np.linspace(0.0, 1.0, 101)


def _mean_curve(classes: Sequence[str], by_class, ap: Dict[str, object]) -> str:
    """The mean over the scored classes (an AP in the summary) of each class's best precision at
    recall r or higher, at r = 0, 0.01, ..., 1."""
    envelopes = []
    for name, (scores, labels) in zip(classes, by_class):
        if ap.get(name) is None or not (labels == 1).any():
            continue
        precision, recall = precision_recall_curve(scores, labels)  # recall falls along the curve
        best = np.maximum.accumulate(precision)  # best precision at this recall or a higher one
        envelopes.append(best[np.searchsorted(-recall, -MEAN_RECALLS, side="right") - 1])
    mean = np.mean(envelopes, axis=0) if envelopes else np.zeros_like(MEAN_RECALLS)
    return svg.line_plot([("mean", MEAN_RECALLS, mean)], f"mean of {len(envelopes):,} scored classes", "recall",
                         "precision", (0.0, 1.0), (0.0, 1.0), width=230, height=200, legend=False)


def read_score_arrays(path: Path) -> Tuple[List[str], List[Tuple[np.ndarray, np.ndarray]]]:
    """(classes, per class its (logits, labels) at the known test entries) from a run's
    test_scores.npz: the known-entry form clipml writes, or the [N, C] one of earlier runs."""
    with np.load(path) as arrays:
        classes, logits, labels = list(arrays["classes"]), arrays["logits"], arrays["labels"]
        cols = arrays["cols"] if "cols" in arrays.files else None
    if cols is None:  # an earlier run's dense arrays
        if logits.shape != labels.shape or logits.shape[1:] != (len(classes),):
            raise DataError(f"{path}: logits {logits.shape}, labels {labels.shape} and {len(classes)} classes "
                            "do not match")
        return classes, [(logits[labels[:, c] != -1, c], labels[labels[:, c] != -1, c]) for c in range(len(classes))]
    if not logits.shape == labels.shape == cols.shape or (cols.size and cols.max() >= len(classes)):
        raise DataError(f"{path}: logits {logits.shape}, labels {labels.shape} and class ids {cols.shape} of "
                        f"{len(classes)} classes do not match")
    order = np.argsort(cols, kind="stable")
    starts = np.searchsorted(cols[order], np.arange(len(classes) + 1))
    return classes, [(logits[order[a:b]], labels[order[a:b]]) for a, b in zip(starts[:-1], starts[1:])]


def thin_curve(precision: np.ndarray, recall: np.ndarray,
               max_points: int = MAX_CURVE_POINTS) -> Tuple[np.ndarray, np.ndarray]:
    """A curve short enough to inline: unchanged up to `max_points`; longer ones keep the ends
    of each run of equal recall (the drawn shape does not change), then evenly spaced points."""
    if precision.size <= max_points:
        return precision, recall
    edges = np.r_[True, np.diff(recall[:-1]) != 0, True] | np.r_[True, np.diff(recall[1:]) != 0, True]
    keep = np.flatnonzero(edges)
    if keep.size > max_points:
        keep = keep[np.unique(np.linspace(0, keep.size - 1, max_points).round().astype(int))]
    return precision[keep], recall[keep]


def _breakdowns(summary: Dict[str, object]) -> str:
    trained, zero_shot = summary.get("test_details", {}), summary.get("zero_shot_test_details", {})
    charts = []
    for key, counts, buckets, title in (
            ("mAP_by_labels", "images_by_labels", [name for name, _, _ in LABEL_BUCKETS], "mAP by labels per image"),
            ("mAP_by_size", "positives_by_size", list(SIZE_BUCKETS), "mAP by object size")):
        if key not in trained:
            continue
        groups = [(f"{bucket} (n={trained[counts].get(bucket, 0)})",
                   [trained[key].get(bucket), zero_shot.get(key, {}).get(bucket)]) for bucket in buckets]
        charts.append(svg.grouped_bars(groups, ["trained", "zero-shot CLIP"], title))
    if not charts:
        return _note("the test split gave no breakdowns")
    localisation = [(name, key) for name, key in (("pointing game", "pointing_game"), ("mass inside", "mass_inside"))
                    if key in trained]
    table = ""
    if localisation:
        table = ("<table><tr><th></th>" + "".join(f"<th>{name}</th>" for name, _ in localisation) + "</tr>"
                 + "".join(f"<tr><th>{label}</th>" + "".join(
                     f'<td class="number">{details[key]:.2f}</td>' if key in details else "<td>-</td>"
                     for _, key in localisation) + "</tr>"
                     for label, details in (("trained", trained), ("zero-shot CLIP", zero_shot))) + "</table>")
    return (f'<div class="grid">{"".join(charts)}</div>{table}'
            + _note("n: images with that many positive labels, or positives of that size (small < 2 %, "
                    "large >= 10 % of the image); a missing bar: an empty bucket."))


def _training(history: Sequence[Dict[str, object]]) -> str:
    if not history:
        return _note("nothing trained (no epochs)")
    epochs = [float(record["epoch"]) for record in history]
    plots = [svg.line_plot([("training loss", epochs, [float(r["loss"]) for r in history])], "training loss",
                           "epoch", "loss", legend=False),
             svg.line_plot([("validation mAP", epochs, [float(r["val"]["mAP"]) for r in history])],
                           "validation mAP", "epoch", "mAP (%)", legend=False),
             svg.line_plot([("learning rate", epochs, [float(r["lr"]) for r in history])], "learning rate",
                           "epoch", "lr", legend=False)]
    return f'<div class="grid">{"".join(plots)}</div>'


def _attention(run: Path, cfg: ExperimentConfig, model, test_split, count: int, device: str) -> str:
    """Figures of visualize.plot_attention for `count` test images drawn with the run's seed,
    each captioned with its file, true labels and top classes (true ones marked)."""
    from clipml.methods import METHODS

    if count == 0:
        return _note("none asked for (train.report_images=0)")
    if not METHODS[cfg.model.method].spatial:
        return _note(f"model.method {cfg.model.method} scores the pooled image feature: no spatial attention")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return _note("attention overlays need matplotlib (pip install clipml[plot]); the rest of the report does not")
    if model is None:
        from clipml.engine.checkpoint import load_model

        checkpoint = run / "prompts.safetensors"
        if not checkpoint.is_file():
            return _note(f"{checkpoint.name} not found in the run: no overlays")
        model = load_model(str(checkpoint), device=device)
    if test_split is None:
        from clipml.data import load_split

        data = cfg.data
        test_split = load_split(data.dataset, data.root, data.test_split, **data.options)
    if len(model.classnames) != test_split.num_classes:
        raise DataError(f"the model has {len(model.classnames)} classes, test split "
                        f"'{test_split.split}' has {test_split.num_classes}")
    rng = np.random.default_rng(cfg.seed)
    chosen = sorted(rng.choice(len(test_split), size=min(count, len(test_split)), replace=False).tolist())
    return "\n".join(_attention_figure(model, test_split, index) for index in chosen)


def _attention_figure(model, split, index: int) -> str:
    from clipml.visualize import attention_maps, plot_attention

    maps = attention_maps(model, split.open_image(index), top_k=TOP_K)
    figure = plot_attention(maps, dpi=FIGURE_DPI)
    buffer = io.BytesIO()
    # JPEG: heatmaps over photos take about a tenth of the bytes of PNG at no visible cost
    figure.savefig(buffer, format="jpeg", dpi=FIGURE_DPI, pil_kwargs={"quality": 85})
    true = [model.classnames[c] for c in np.flatnonzero(split.targets.dense([index])[0] == 1)]
    shown = [f"{name} {'(true)' if name in true else '(not true)'}" for name in maps.classes]
    caption = (f"<b>{escape(split.items[index])}</b>; true labels: {escape(', '.join(true) or 'none')}; "
               f"top {len(maps.classes)} predicted: {escape(', '.join(shown))}")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    alt = escape(f"attention of {', '.join(maps.classes)} on {split.items[index]}")
    return (f'<figure data-image="{escape(split.items[index])}"><figcaption>{caption}</figcaption>'
            f'<img alt="{alt}" src="data:image/jpeg;base64,{data}"/></figure>')


__all__ = ["write_report", "thin_curve", "read_score_arrays", "REPORT"]
