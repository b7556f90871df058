"""Scoring a split: text encoded once per evaluation, per-class probabilities, METHODS §9 metrics,
and where the split allows, the METHODS §11 localisation metrics and mAP breakdowns."""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from clipml.breakdown import (LABEL_BUCKETS, SIZE_BUCKETS, SIZE_THRESHOLDS, known_map_by_label_count,
                              known_map_by_object_size, object_sizes)
from clipml.data.splits import require_positives
from clipml.engine import Progress, distributed
from clipml.engine.classes import score_in_chunks
from clipml.engine.features import CountedPass
from clipml.ensemble import fit_calibration
from clipml.errors import DataError
from clipml.experiment import EvalConfig
from clipml.localization import ChunkedLocalization, MapCorrelation, summarize_localization
from clipml.known_scores import KnownScores, KnownScoresBuilder
from clipml.metrics import TOP_K, evaluate_known, known_f1_thresholds, sigmoid
from clipml.model import MultiLabelCLIP

logger = logging.getLogger(__name__)


def predict(model: MultiLabelCLIP, source, progress: Progress = None, class_chunk: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(logits [N, C], int8 labels [N, C]) in the split's image order; under data
    parallelism every rank scores its shard and all ranks get the gathered result.
    `class_chunk`: score that many classes at a time (eval.class_chunk; 0: all at once)."""
    scored = _score(model, source, progress, localize=False, dense=True, class_chunk=class_chunk)
    return scored.logits, scored.labels


@dataclasses.dataclass
class Scored:
    """What `_score` gives: the scores at the known entries; with `dense`, the [N, C] logits and
    labels; the pointing-game hits and mass inside per (image, class), [2, N, C] (nan: no trial),
    where asked and the model gives attention maps; each image's class-map correlation [N]."""

    known: KnownScores
    logits: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    localization: Optional[np.ndarray] = None
    correlation: Optional[np.ndarray] = None


class _BatchMaps:
    """What `_score` reads of one batch's attention maps, a class chunk at a time: the class-map
    correlation (with `correlate`) and the localisation trials (with `localize`; the images'
    masks are decoded once per batch, at its first chunk of maps: never for a model without)."""

    def __init__(self, split, rows: Sequence[int], grid, classes: int, localize: bool, correlate: bool) -> None:
        self.split, self.rows, self.grid, self.classes, self.localize = split, rows, grid, classes, localize
        self.correlation = MapCorrelation() if correlate else None
        self.localization: Optional[ChunkedLocalization] = None
        self.seen = False

    def add(self, classes: torch.Tensor, attention: torch.Tensor) -> None:
        if self.localize and not self.seen:
            self.localization = ChunkedLocalization([self._objects(i) for i in self.rows], self.grid, self.classes)
        self.seen = True
        if self.correlation is not None:
            self.correlation.add(attention)
        if self.localization is not None:
            self.localization.add(classes, attention)

    def _objects(self, index: int):
        objects = self.split.instances(index)
        if objects is None:
            raise DataError(f"{self.split.dataset}/{self.split.split}: no object masks for image "
                            f"{self.split.items[index]!r}, though the split has instances")
        return objects

    def trials(self) -> np.ndarray:
        """[2, B, C]: the batch's pointing-game hits and mass inside (nan: no trial, or no maps)."""
        if self.localization is None:
            return np.full((2, len(self.rows), self.classes), np.nan)
        return np.stack([self.localization.hits, self.localization.mass])


def _score(model: MultiLabelCLIP, source, progress: Progress, localize: bool, correlate: bool = False,
           dense: bool = False, k: int = 0, class_chunk: int = 0) -> Scored:
    """Score every image of `source`'s split. Each batch's logits are kept at its known entries
    only (with their top-`k` flags), so a test split of 9,605 classes never builds its [N, C]
    matrix unless `dense` asks for it. With `localize` (the split has object masks), also the
    localisation trials; with `correlate`, the class-map correlations (both None without attention
    maps). Both are accumulated from each class chunk's maps (`_BatchMaps`), so no batch holds the
    maps of all classes, nor any [C, C] matrix. The text features are computed once for the whole
    split; `class_chunk` scores that many classes at a time."""
    model.eval()
    split = source.split
    count, classes = len(split), len(model.classnames)
    batches = source.batches()
    if progress is not None:
        batches = progress(CountedPass(batches, len(source)), "eval")
    known = KnownScoresBuilder(classes, k)
    indices, scores, labels = [np.zeros(0, dtype=np.int64)], [np.zeros((0, classes), np.float32)], \
        [np.zeros((0, classes), np.int8)]
    hits, mass = [np.zeros((0, classes))], [np.zeros((0, classes))]
    correlations = [np.zeros(0)]
    with torch.no_grad():
        text = model.text_features()
        for dense_features, batch_labels, index in batches:
            maps = _BatchMaps(split, index.tolist(), dense_features.grid, classes, localize, correlate)
            batch_logits = score_in_chunks(model, dense_features, text, class_chunk,
                                           maps.add if localize or correlate else None)
            batch_logits, batch_labels = batch_logits.float().cpu().numpy(), batch_labels.cpu().numpy()
            indices.append(index.numpy())
            known.add(index.numpy(), batch_logits, batch_labels)
            if dense:
                scores.append(batch_logits)
                labels.append(batch_labels)
            if correlate:  # nan without attention: every rank gathers the same arrays
                correlations.append(maps.correlation.result() if maps.seen else np.full(len(index), np.nan))
            if localize:  # nan rows without attention: every rank gathers the same arrays
                batch_hits, batch_mass = maps.trials()
                hits.append(batch_hits)
                mass.append(batch_mass)
    parts = [np.concatenate(indices), np.concatenate(scores), np.concatenate(labels), np.concatenate(correlations),
             *known.arrays()]
    if localize:
        parts += [np.concatenate(hits), np.concatenate(mass)]
    context = getattr(source, "context", None)
    if context is not None:
        parts = distributed.gather_rows(context, parts)
    index = parts[0]
    if len(index) != count or len(np.unique(index)) != count:
        raise RuntimeError(f"evaluation scored {len(np.unique(index))} of {count} images")
    scored = Scored(known.finish(count, list(parts[4:9])))
    if dense:
        scored.logits = np.zeros((count, classes), dtype=np.float32)
        scored.labels = np.zeros((count, classes), dtype=np.int8)
        scored.logits[index], scored.labels[index] = parts[1], parts[2]
    if localize and not np.isnan(parts[9]).all():
        scored.localization = np.full((2, count, classes), np.nan)
        scored.localization[0][index], scored.localization[1][index] = parts[9], parts[10]
    if correlate and not np.isnan(parts[3]).all():
        scored.correlation = np.full(count, np.nan)
        scored.correlation[index] = parts[3]
    return scored


def evaluate(model: MultiLabelCLIP, source, progress: Progress = None, details: bool = True,
             settings: Optional[EvalConfig] = None, thresholds: Optional[Dict[str, object]] = None,
             scores_path: Optional[str] = None, arrays_path: Optional[str] = None) -> Dict[str, object]:
    """All metrics of `model` on `source`'s split; unknown (-1) entries are ignored. Rankings
    use the logits, thresholds the probabilities; `settings` choose the AP and the top-3 rule
    (default: envelope AP, reference rule). With `thresholds` (from `decision_thresholds`) the
    F1 family at them is added, suffixed `_tuned`. `scores_path`: also write every
    (image, class) score there (see `write_scores`; it alone needs the [N, C] logits);
    `arrays_path`: the logits and labels at the known entries (see `write_score_arrays`).

    Every metric reads the scores at the known entries only (clipml.known_scores): on a
    partially labelled split, mAP, per-class AP and the breakdowns score a class only with a
    known positive and a known negative (`coverage` says how many, and why not the others).

    With `details`, also mAP by labels per image (`mAP_by_labels`), and on a split with
    object masks mAP by object size (`mAP_by_size`) and, for a model with attention maps,
    the pointing game and attention mass inside (`pointing_game`, `mass_inside`, per class
    too; see clipml.localization and clipml.breakdown); for a model with attention maps, the
    mean over images of the class-map correlation (`class_map_correlation`: near 1, the
    per-class maps are one map; clipml.localization.class_map_correlation). Turn it off where only the headline
    counts (per-epoch validation): decoding masks then costs nothing.
    """
    settings = settings or EvalConfig()
    split = source.split
    require_positives(split)  # before scoring: mAP would be undefined
    with_masks = details and split.has_instances
    k = TOP_K if split.num_classes >= TOP_K else 0
    context = getattr(source, "context", None)
    main = context is None or context.is_main
    scored = _score(model, source, progress, localize=with_masks, correlate=details,
                    dense=scores_path is not None, k=k, class_chunk=settings.class_chunk)
    known = scored.known
    tuned = None if thresholds is None else class_thresholds(thresholds, model.classnames)
    if scores_path is not None and main:
        write_scores(scores_path, split, model.classnames, scored.logits, sigmoid(scored.logits), scored.labels)
    if arrays_path is not None and main:
        write_score_arrays(arrays_path, split, model.classnames, known)
    result = evaluate_known(known, ap=settings.ap, top_k_rule=settings.top3, tuned_thresholds=tuned)
    if details:
        result.update(known_map_by_label_count(known, kind=settings.ap))
    if with_masks:
        sizes = object_sizes(split)
        result.update(known_map_by_object_size(known, sizes[known.rows, known.cols], kind=settings.ap))
    if scored.localization is not None:
        result.update(summarize_localization(*scored.localization))
    if scored.correlation is not None and not np.isnan(scored.correlation).all():
        result["class_map_correlation"] = float(np.nanmean(scored.correlation))
    return result


def write_scores(path: str, split, classnames: Sequence[str], logits: np.ndarray, probs: np.ndarray,
                 labels: np.ndarray) -> None:
    """One CSV row per (image, class): image path as the split lists it, class, probability,
    logit (rankings use it: probabilities can saturate to ties) and label (1, 0, -1 unknown)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "class", "score", "logit", "label"])
        for image, row_logits, row_probs, row_labels in zip(split.items, logits, probs, labels):
            for name, logit, prob, label in zip(classnames, row_logits, row_probs, row_labels):
                writer.writerow([image, name, f"{prob:.9g}", f"{logit:.9g}", int(label)])  # float32 exactly
    logger.info("wrote %d x %d scores to %s", len(split.items), len(classnames), path)


def write_score_arrays(path: str, split, classnames: Sequence[str], known: KnownScores) -> None:
    """A split's scores at its known entries as a compressed .npz (`images`, `classes`, `shape`,
    and per known entry `rows`, `cols`, `logits` float32, `labels` int8): what a run keeps for
    its report's precision-recall curves, about 10 bytes per known entry (unknown entries are
    in no curve), where the CSV of `write_scores` takes about forty per (image, class)."""
    np.savez_compressed(path, images=np.array(split.items, dtype=str), classes=np.array(classnames, dtype=str),
                        shape=np.asarray(known.shape, dtype=np.int64), rows=known.rows.astype(np.int64),
                        cols=known.cols.astype(np.int32), logits=known.ranking.astype(np.float32),
                        labels=known.labels.astype(np.int8))


DETAIL_COUNTS = {"mAP_by_labels": "images_by_labels", "mAP_by_size": "positives_by_size"}


def detail_summary(metrics: Dict[str, object]) -> Dict[str, object]:
    """The localisation and breakdown numbers of an `evaluate` result as summaries show them:
    x 100, rounded, with the bucket counts; empty where `evaluate` gave none."""
    out: Dict[str, object] = {key: round(100 * float(metrics[key]), 3)
                              for key in ("pointing_game", "mass_inside") if key in metrics}
    if "class_map_correlation" in metrics:
        out["class_map_correlation"] = round(float(metrics["class_map_correlation"]), 4)
    for key, counts in DETAIL_COUNTS.items():
        if key in metrics:
            out[key] = {name: None if value is None else round(100 * value, 3) for name, value in metrics[key].items()}
            out[counts] = dict(metrics[counts])
    return out


def detail_table(named: Sequence[Tuple[str, Dict[str, object]]]) -> Tuple[List[str], List[List[str]], str]:
    """(headers, rows, note) of `detail_summary` results, one row per (name, details), with
    the columns any of them has; the note gives the images / positives in each bucket.
    Empty headers when none has details."""
    columns = [("pointing_game", None, "pointing game"), ("mass_inside", None, "mass inside"),
               ("class_map_correlation", None, "class-map corr.")]
    columns += [("mAP_by_labels", name, f"mAP {name} label{'' if name == '1' else 's'}") for name, _, _ in LABEL_BUCKETS]
    columns += [("mAP_by_size", name, f"mAP {name}") for name in SIZE_BUCKETS]
    columns = [column for column in columns if any(column[0] in details for _, details in named)]
    if not columns:
        return [], [], ""

    def cell(details, key, bucket):
        value = details.get(key)
        value = value.get(bucket) if isinstance(value, dict) else value
        return "n/a" if value is None else f"{value:.3f}" if key == "class_map_correlation" else f"{value:.2f}"

    rows = [[label, *[cell(details, key, bucket) for key, bucket, _ in columns]] for label, details in named]
    counts = next((details for _, details in named if "images_by_labels" in details), {})
    notes = []
    if "images_by_labels" in counts:
        notes.append("images per bucket: " + ", ".join(f"{k}: {v}" for k, v in counts["images_by_labels"].items()))
    if "positives_by_size" in counts:
        small, large = (100 * t for t in SIZE_THRESHOLDS)
        notes.append(f"positives per size (small < {small:g} %, large >= {large:g} % of the image): "
                     + ", ".join(f"{k}: {v}" for k, v in counts["positives_by_size"].items()))
    return ["", *[label for _, _, label in columns]], rows, "; ".join(notes)


AP_NAMES = {
    "envelope": "envelope (VOC 2010+ all-point, as the SARB/DSRB code)",
    "raw": "raw (non-interpolated, as DualCoOp's and ASL's code and scikit-learn)",
    "voc07": "voc07 (VOC 2007 11-point)",
}


def evaluation_notes(settings: EvalConfig, classes: int) -> Dict[str, str]:
    """What the numbers of a summary are, in words: which AP, which top-3 rule, which thresholds."""
    if classes < TOP_K:
        top = f"left out: {classes} classes, fewer than {TOP_K}"
    elif settings.top3 == "reference":
        top = "reference rule: the 3 highest-scoring classes of an image that have logit >= 0 (ML-GCN/SARB/DSRB code)"
    else:
        top = "plain: the 3 highest-scoring classes of an image, whatever their logit"
    return {
        "AP": AP_NAMES[settings.ap],
        "top3": top,
        "thresholds": "CF1/OF1 at probability 0.5; _tuned at per-class thresholds chosen on the validation split "
                      f"(max F1; classes with fewer than {settings.threshold_min_positives} known validation "
                      f"positives: the max-OF1 threshold; none below calibrated probability "
                      f"{settings.threshold_floor:g}), as predict uses them",
        "CF1": "CF1 = 2 CP CR / (CP + CR) (ML-GCN/SARB/DSRB code); CF1_mean = mean of the per-class F1s "
               "(DualCoOp's code)",
    }


THRESHOLD_RULE = ("per class, the logit threshold maximising its F1 on the validation split; classes with fewer "
                  "than `min_positives` known validation positives use the one maximising the pooled F1 (OF1); "
                  "none below the logit whose calibrated probability is `floor`")


def decision_thresholds(model: MultiLabelCLIP, source, progress=None,
                        settings: Optional[EvalConfig] = None) -> Dict[str, object]:
    """Per-class decision thresholds and a probability calibration chosen on `source` (the
    validation split), as stored in a prompt checkpoint (see `choose_thresholds`)."""
    require_positives(source.split)
    settings = settings or EvalConfig()
    scored = _score(model, source, progress, localize=False, class_chunk=settings.class_chunk)
    return choose_thresholds(scored.known, model.classnames, settings)


def choose_thresholds(known: KnownScores, classnames: Sequence[str], settings: EvalConfig) -> Dict[str, object]:
    """From the validation logits at the known entries (`known`: no [N, C] matrix), logit thresholds by class name (`per_class`), the `global` one for classes with fewer than
    `settings.threshold_min_positives` known positives (`fallback`) and for classes a checkpoint
    does not know, and `calibration`: Platt scaling of the logits on the known labels (the
    ensembles' clipml.ensemble.fit_calibration), so that predict shows probabilities rather than
    the saturated sigmoid of a partial-label loss (None where no fit is possible). No threshold lies below the logit whose
    calibrated probability is `settings.threshold_floor` (`floor_logit`)."""
    values, global_threshold, fallback = known_f1_thresholds(known, settings.threshold_min_positives)
    calibration = fit_calibration(known.ranking, known.labels) if (known.labels == 0).any() else None
    if calibration is None or calibration.scale <= 0:  # nothing to calibrate against, or logits ranking against it
        logger.warning("no calibration could be fit on the validation split (it needs known negatives, and logits "
                       "that rank its positives higher): predict shows the plain sigmoid of the logits")
        calibration = None
    floor_logit = -np.inf
    if calibration is not None and settings.threshold_floor > 0:
        target = np.log(settings.threshold_floor) - np.log1p(-settings.threshold_floor)
        floor_logit = (target - calibration.bias) / calibration.scale
    values, global_threshold = np.maximum(values, floor_logit), max(global_threshold, floor_logit)
    return {
        "rule": THRESHOLD_RULE,
        "space": "logit",
        "global": float(global_threshold),
        "per_class": {name: float(v) for name, v, used in zip(classnames, values, fallback) if not used},
        "fallback": [name for name, used in zip(classnames, fallback) if used],
        "min_positives": settings.threshold_min_positives,
        "floor": settings.threshold_floor,
        "floor_logit": None if np.isinf(floor_logit) else float(floor_logit),
        "calibration": None if calibration is None else {"scale": calibration.scale, "bias": calibration.bias},
    }


def class_thresholds(thresholds: Dict[str, object], classnames: Sequence[str]) -> np.ndarray:
    """Logit thresholds [C] for `classnames` from stored thresholds (the global one where a class has none)."""
    per_class = thresholds["per_class"]
    return np.array([per_class.get(name, thresholds["global"]) for name in classnames], dtype=np.float64)
