"""From an ExperimentConfig to the objects a run needs: device, backbone, splits, sources, model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from clipml.backbones import FrozenCLIP, load_backbone
from clipml.data import carve_validation, import_mask, load_split, partial_split
from clipml.data.base import MultiLabelSplit
from clipml.data.transforms import tower_eval_transform, tower_train_transform
from clipml.devices import select_device
from clipml.engine.cache import build_feature_cache, union_split
from clipml.engine.distributed import DistContext
from clipml.engine.features import CachedFeatureSource, ImageFeatureSource
from clipml.errors import ConfigError, DataError
from clipml.experiment import ExperimentConfig
from clipml.metrics import coverage_of_counts, coverage_text

logger = logging.getLogger(__name__)


def build_backbone(cfg: ExperimentConfig, device: Optional[str] = None) -> FrozenCLIP:
    return load_backbone(cfg.backbone, device or select_device(cfg.device))


def label_source(cfg: ExperimentConfig, train: MultiLabelSplit) -> str:
    """Where the training labels come from, given the loaded (unmasked) training split: an
    imported mask, the simulated protocol at known_ratio (on complete labels, or on top of partial
    ones with data.partial_labels=simulate), or the labels as they are."""
    data = cfg.data
    if data.mask_file:
        return "imported mask"
    if data.known_ratio < 1.0 and (train.labels_complete or data.partial_labels == "simulate"):
        return "simulated" if train.labels_complete else "simulated on own partial labels"
    return "complete labels, all kept" if train.labels_complete else "own partial labels, kept"


def _describe(cfg: ExperimentConfig, source: str, before: float) -> str:
    p = f"p={cfg.data.known_ratio:g}, data.mask_seed={cfg.data.mask_seed}"
    return {
        "imported mask": f"imported from data.mask_file={cfg.data.mask_file}",
        "simulated": f"simulated protocol at {p} on complete labels",
        "simulated on own partial labels": (f"simulated protocol at {p} on top of the dataset's own partial labels "
                                            f"({100 * before:.1f}% known before; data.partial_labels=simulate)"),
        "complete labels, all kept": "complete labels, all kept (data.known_ratio=1)",
        "own partial labels, kept": (f"the dataset's own partial labels, kept as they are (data.known_ratio="
                                     f"{cfg.data.known_ratio:g} not applied; data.partial_labels=simulate applies it)"),
    }[source]


def load_splits(cfg: ExperimentConfig) -> Tuple[MultiLabelSplit, MultiLabelSplit]:
    """(train, test) as the dataset holds them: no mask applied, nothing carved."""
    data = cfg.data
    return (load_split(data.dataset, data.root, data.train_split, **data.options),
            load_split(data.dataset, data.root, data.test_split, **data.options))


def _warn_unknown_test_labels(test: MultiLabelSplit) -> None:
    """Unknown test entries are left out of the scores, and the mAP scores only the classes with a
    known positive and a known negative (one without a negative would score a perfect AP whatever
    the model does): say so, with the same count the summary gives at the end."""
    if test.labels_complete:
        return
    coverage = coverage_of_counts(test.targets.count_per_class(1), test.targets.count_per_class(0))
    unscored = [test.classes[c] for c in np.flatnonzero(~coverage["scored"])]
    # Open Images and LVIS are partial by construction; one's own manifest can list more negatives.
    hint = "" if test.dataset in ("openimages", "lvis") or not coverage["no_known_negative"] else \
        ": list the test split's negatives, or data.options.unlisted=negative"
    logger.warning("%s/%s: %.1f%% of the test labels are unknown and left out of the scores%s",
                   test.dataset, test.split, 100 * (1 - test.known_fraction),
                   f"; the mAP {coverage_text(coverage)} (e.g. not {unscored[0]!r}){hint}" if unscored else "")


def build_splits(cfg: ExperimentConfig, loaded: Optional[Tuple[MultiLabelSplit, MultiLabelSplit]] = None
                 ) -> Tuple[MultiLabelSplit, MultiLabelSplit, MultiLabelSplit]:
    """(train, validation, test) from the `loaded` splits (default: `load_splits(cfg)`): the
    training split gets its partial labels (see label_source), then a seeded validation part is
    carved from it, or `data.val_split` names the validation split. The test split is never used
    for model selection."""
    data = cfg.data
    train, test = loaded or load_splits(cfg)
    source, before = label_source(cfg, train), train.known_fraction
    if source == "imported mask":
        train = import_mask(data.mask_file, train)
    elif source.startswith("simulated"):
        train = partial_split(train, data.known_ratio, data.mask_seed, data.mask_dir)
    if data.val_split:
        val = load_validation(cfg, train)
    else:
        train, val = carve_validation(train, data.val_fraction, seed=data.mask_seed)
    _warn_unknown_test_labels(test)
    logger.info("%s: %d train, %d val, %d test images; training labels: %s; %.1f%% of them known",
                data.dataset, len(train), len(val), len(test), _describe(cfg, source, before),
                known_percent(cfg, train, val))
    return train, val, test


def known_percent(cfg: ExperimentConfig, train: MultiLabelSplit, val: MultiLabelSplit) -> float:
    """% of the training split's label entries known, the carved validation part included."""
    parts = (train,) if cfg.data.val_split else (train, val)
    known, entries = sum(part.targets.nnz for part in parts), sum(len(part) * part.num_classes for part in parts)
    return 100 * known / max(entries, 1)


def load_validation(cfg: ExperimentConfig, train: MultiLabelSplit) -> MultiLabelSplit:
    """The split `data.val_split` names (for a manifest also a file), checked against the training split."""
    data = cfg.data
    name = data.val_split
    if data.dataset == "manifest" and Path(name).suffix.lower() in (".jsonl", ".csv"):
        if not Path(name).is_file():
            raise DataError(f"data.val_split: manifest file {name} not found")
        val = load_split(data.dataset, name, "val", **data.options)
    else:
        val = load_split(data.dataset, data.root, name, **data.options)
    if val.classes != train.classes:
        raise DataError(f"data.val_split={name!r} has classes {val.classes[:5]}... ({len(val.classes)}), the training "
                        f"split {train.classes[:5]}... ({len(train.classes)}): they must be the same, in the same order")
    shared = {str(Path(val.root or "") / item) for item in val.items} & {str(Path(train.root or "") / item)
                                                                       for item in train.items}
    if shared:
        raise DataError(f"data.val_split={name!r} shares {len(shared)} image(s) with the training split "
                        f"(first: {sorted(shared)[0]}): validation must be other images")
    return val


def validation_description(cfg: ExperimentConfig, val: MultiLabelSplit) -> str:
    """Where the validation images come from, in words (run summaries, zero_shot_eval)."""
    data = cfg.data
    if data.val_split:
        return f"{len(val)} images of data.val_split={data.val_split!r} (labels as given)"
    masked = "full labels" if label_source(cfg, val) == "complete labels, all kept" else "partial labels"
    return (f"{len(val)} images carved from split '{data.train_split}' (data.val_fraction={data.val_fraction}, "
            f"data.mask_seed={data.mask_seed}; {masked})")


def data_identity(loaded: Tuple[MultiLabelSplit, MultiLabelSplit], train: MultiLabelSplit,
                  val: MultiLabelSplit) -> Dict[str, Dict[str, Optional[str]]]:
    """What a run is trained and tested on, as digests: the dataset's train and test splits as
    loaded (image list, labels, image files' sizes and times) and the training and validation
    parts with their partial labels (the validation files too: data.val_split may name others).
    A run folder records it (data.json) so that a rerun on edited labels or replaced images is
    refused instead of resumed."""
    return {**loaded_identity(loaded), "training part": _digests(train, files=False),
            "validation part": _digests(val)}


def loaded_identity(loaded: Tuple[MultiLabelSplit, MultiLabelSplit]) -> Dict[str, Dict[str, Optional[str]]]:
    """The part of `data_identity` that every run on the same dataset shares (no mask applied)."""
    return {"train split": _digests(loaded[0]), "test split": _digests(loaded[1])}


def _digests(split: MultiLabelSplit, files: bool = True) -> Dict[str, Optional[str]]:
    out = {"images": split.fingerprint(), "labels": split.labels_digest()}
    if files:
        out["image files"] = split.files_digest()
    return out


def build_sources(cfg: ExperimentConfig, backbone: FrozenCLIP, train: MultiLabelSplit,
                  val: MultiLabelSplit, test: MultiLabelSplit, context: Optional[DistContext] = None):
    """(train, validation, test) feature sources; under `torchrun` every rank calls this with its
    `context`, so that all ranks share the feature-cache extraction."""
    data = cfg.data
    if data.cache:
        return build_cached_sources(cfg, backbone, train, val, test, context)
    plain = tower_eval_transform(backbone.preprocess, normalize=False)
    augment = plain if data.augment == "none" else tower_train_transform(backbone.preprocess, data.augment,
                                                                         normalize=False)
    return (
        ImageFeatureSource(train, backbone, augment, data.batch_size, data.workers, shuffle=True),
        ImageFeatureSource(val, backbone, plain, data.eval_batch_size, data.workers),
        ImageFeatureSource(test, backbone, plain, data.eval_batch_size, data.workers),
    )


def build_cached_sources(cfg: ExperimentConfig, backbone: FrozenCLIP, train: MultiLabelSplit,
                         val: MultiLabelSplit, test: MultiLabelSplit, context: Optional[DistContext] = None):
    """Sources reading a feature cache: one for the training and validation parts together (keyed
    by their sorted image list, so it survives another validation carve), one for the test split.
    Only the first is held on `data.cache_device`: it is read every epoch, the test cache twice."""
    data = cfg.data
    if data.cache_device == "cuda" and backbone.device.type != "cuda":
        raise ConfigError(f"data.cache_device=cuda needs the model on CUDA, but it runs on {backbone.device}; set device=cuda or data.cache_device=cpu")
    options = dict(augment=data.augment, seed=data.cache_seed, batch_size=data.eval_batch_size,
                   workers=data.workers, context=context)
    # A named validation split may lie elsewhere (another manifest): it gets its own cache, as the test split.
    shared = build_feature_cache(train if data.val_split else union_split(train, val), backbone, data.cache_dir,
                                 data.cache_views, **options)
    if data.cache_device == "cuda":
        shared.load(str(backbone.device))
    val_cache = build_feature_cache(val, backbone, data.cache_dir, 1, **options) if data.val_split else shared
    test_cache = build_feature_cache(test, backbone, data.cache_dir, 1, **options)
    device = backbone.device
    return (
        CachedFeatureSource(train, shared, data.batch_size, device, shuffle=True, random_views=True),
        CachedFeatureSource(val, val_cache, data.eval_batch_size, device),
        CachedFeatureSource(test, test_cache, data.eval_batch_size, device),
    )
