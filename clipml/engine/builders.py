"""From an ExperimentConfig to the objects a run needs: device, backbone, splits, sources, model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple

from clipml.backbones import FrozenCLIP, load_backbone
from clipml.data import carve_validation, import_mask, load_split, partial_split
from clipml.data.base import MultiLabelSplit
from clipml.data.transforms import eval_transform, train_transform
from clipml.devices import select_device
from clipml.engine.cache import build_feature_cache, union_split
from clipml.engine.distributed import DistContext
from clipml.engine.features import CachedFeatureSource, ImageFeatureSource
from clipml.errors import ConfigError, DataError
from clipml.experiment import ExperimentConfig

logger = logging.getLogger(__name__)


def build_backbone(cfg: ExperimentConfig, device: Optional[str] = None) -> FrozenCLIP:
    return load_backbone(cfg.backbone, device or select_device(cfg.device))


def build_splits(cfg: ExperimentConfig) -> Tuple[MultiLabelSplit, MultiLabelSplit, MultiLabelSplit]:
    """(train, validation, test): the training split gets the partial-label mask, then a seeded
    validation part is carved from it, or `data.val_split` names the validation split. The test
    split is never used for model selection."""
    data = cfg.data
    train = load_split(data.dataset, data.root, data.train_split, **data.options)
    test = load_split(data.dataset, data.root, data.test_split, **data.options)
    if data.mask_file:
        train = import_mask(data.mask_file, train)
    elif data.known_ratio < 1.0:
        train = partial_split(train, data.known_ratio, data.mask_seed, data.mask_dir)
    if data.val_split:
        val = load_validation(cfg, train)
    else:
        train, val = carve_validation(train, data.val_fraction, seed=data.mask_seed)
    logger.info("%s: %d train, %d val, %d test images; %.1f%% of training labels known",
                data.dataset, len(train), len(val), len(test), 100 * train.known.mean())
    return train, val, test


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
    masked = "partial labels" if data.mask_file or data.known_ratio < 1.0 else "full labels"
    return (f"{len(val)} images carved from split '{data.train_split}' (data.val_fraction={data.val_fraction}, "
            f"data.mask_seed={data.mask_seed}; {masked})")


def build_sources(cfg: ExperimentConfig, backbone: FrozenCLIP, train: MultiLabelSplit,
                  val: MultiLabelSplit, test: MultiLabelSplit, context: Optional[DistContext] = None):
    """(train, validation, test) feature sources; under `torchrun` every rank calls this with its
    `context`, so that all ranks share the feature-cache extraction."""
    data = cfg.data
    if data.cache:
        return build_cached_sources(cfg, backbone, train, val, test, context)
    size, mean, std = backbone.image_size, backbone.mean, backbone.std
    plain = eval_transform(size, mean, std, normalize=False)
    augment = plain if data.augment == "none" else train_transform(size, mean, std, data.augment, normalize=False)
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
