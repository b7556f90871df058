"""Datasets, partial-label masks and transforms.

The torch-based names (transforms, ImageLabelDataset, make_loader) are imported on first use,
so reading datasets and masks does not pay for importing torch and torchvision.
"""

import importlib

from clipml.data.base import NEGATIVE, POSITIVE, UNKNOWN, MultiLabelSplit
from clipml.data.coco import load_coco2014
from clipml.data.lvis import load_lvis
from clipml.data.manifest import load_manifest
from clipml.data.nuswide import load_nuswide
from clipml.data.openimages import load_openimages
from clipml.data.partial import (
    import_mask,
    load_mask,
    mask_path,
    partial_split,
    save_mask,
    simulate_known,
)
from clipml.data.registry import available_datasets, load_split, register_dataset
from clipml.data.splits import carve_validation
from clipml.data.vg import load_vg200
from clipml.data.vocab import class_names, official_names, readable_names, templates, vocabulary
from clipml.data.voc import load_voc2007

__all__ = [
    "NEGATIVE", "POSITIVE", "UNKNOWN", "MultiLabelSplit",
    "load_split", "register_dataset", "available_datasets",
    "load_coco2014", "load_voc2007", "load_vg200", "load_nuswide", "load_manifest",
    "load_openimages", "load_lvis",
    "simulate_known", "partial_split", "import_mask", "save_mask", "load_mask", "mask_path",
    "carve_validation",
    "class_names", "official_names", "readable_names", "templates", "vocabulary",
    "eval_transform", "train_transform", "Normalize255", "ImageLabelDataset", "make_loader",
]

_LAZY = {
    "eval_transform": "clipml.data.transforms",
    "train_transform": "clipml.data.transforms",
    "Normalize255": "clipml.data.transforms",
    "ImageLabelDataset": "clipml.data.loader",
    "make_loader": "clipml.data.loader",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipml.data' has no attribute {name!r}")
