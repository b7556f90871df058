"""Dataset registry: one name -> one loader, so configs name datasets by string. The datasets of
files on disk register here; plugins (clipml.plugins: the lab's "synthetic" world) register
their own with `register_dataset` when imported, which every lookup here does first."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from clipml.data._files import drop_undecodable
from clipml.data.base import MultiLabelSplit
from clipml.data.coco import load_coco2014
from clipml.data.lvis import load_lvis
from clipml.data.manifest import load_manifest
from clipml.data.nuswide import load_nuswide
from clipml.data.openimages import load_openimages
from clipml.data.vg import load_vg200
from clipml.data.voc import load_voc2007
from clipml.errors import ConfigError
from clipml.plugins import load_plugins

Loader = Callable[..., MultiLabelSplit]
_LOADERS: Dict[str, Loader] = {}


def register_dataset(name: str, fn: Loader, *, overwrite: bool = False) -> None:
    """Register `fn(root, split, **options) -> MultiLabelSplit` under `name`."""
    if not name or not isinstance(name, str):
        raise ConfigError(f"dataset name must be a non-empty string, got {name!r}")
    if name in _LOADERS and not overwrite and _LOADERS[name] is not fn:
        raise ConfigError(f"dataset {name!r} is already registered (pass overwrite=True to replace it)")
    _LOADERS[name] = fn


def available_datasets() -> List[str]:
    load_plugins()
    return sorted(_LOADERS)


def load_split(name: str, root: Union[str, Path], split: str, /, **options) -> MultiLabelSplit:
    """Load split `split` of dataset `name` from `root`; options go to that dataset's loader, except
    `on_undecodable_image` ("error" or "skip", see `drop_undecodable`), which every dataset takes."""
    if name not in available_datasets():
        raise ConfigError(f"unknown dataset {name!r}; registered: {', '.join(available_datasets())}")
    on_undecodable_image = options.pop("on_undecodable_image", "error")
    accepted = option_names(name)
    unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
    if unknown:
        raise ConfigError(f"dataset {name!r}: unknown data.options {unknown}; accepted: "
                          f"{', '.join([*accepted, 'on_undecodable_image'])}")
    return drop_undecodable(_LOADERS[name](root, split, **options), on_undecodable_image)


def option_names(name: str) -> Optional[List[str]]:
    """The options dataset `name`'s loader takes (its keyword-only parameters; `load_split` adds
    `on_undecodable_image`), or None when the loader takes any keyword."""
    if name not in available_datasets():
        raise ConfigError(f"unknown dataset {name!r}; registered: {', '.join(available_datasets())}")
    parameters = inspect.signature(_LOADERS[name]).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return [n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]


for _name, _fn in (
    ("coco2014", load_coco2014),
    ("voc2007", load_voc2007),
    ("vg200", load_vg200),
    ("nuswide", load_nuswide),
    ("openimages", load_openimages),
    ("lvis", load_lvis),
    ("manifest", load_manifest),
):
    register_dataset(_name, _fn)
