"""Methods as registered units: one module per method declares its prompt learner, scoring head,
config section (``model.<method>``), checkpoint state and training data; training terms (DSRB
blending, conditional transport) sit beside them (terms.py). See registry.py and README, "Adding
a method"."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from clipml.methods.base import Method, Output, cosine_head, logit_scale_and_bias
from clipml.methods.registry import METHODS, get_method, method_sections, moved_keys, register_method, upgrade_model_dict
from clipml.methods.terms import BlendingConfig, Step, TrainingTerm, TransportConfig

# Every module of this package but the machinery is a method and registers itself when imported:
# adding a method is adding its module.
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry", "terms"):
        importlib.import_module(f"{__name__}.{_module.name}")

BASELINE = "zero_shot"  # the method every run is compared with (summary's zero_shot_* entries)


def baseline_config(model, templates=None, scoring=None):
    """The config of the baseline scored beside every run: hand-written prompts (`templates`, by
    default `model`'s), `model`'s temperature, no training terms; `scoring` None: the baseline's
    own options where `model` is the baseline, else their defaults."""
    from clipml.model import ModelConfig

    chosen = list(model.templates if templates is None else templates)
    options = model.method_options if model.method == BASELINE else METHODS[BASELINE].options()
    if scoring is not None:
        options = dataclasses.replace(options, scoring=scoring)
    return ModelConfig(method=BASELINE, templates=chosen, temperature=model.temperature,
                       learn_temperature=model.learn_temperature, method_options=options)


def spatial_methods():
    """Names of the methods whose output carries attention maps."""
    return [name for name, cls in METHODS.items() if cls.spatial]


__all__ = ["METHODS", "Method", "Output", "Step", "TrainingTerm", "BlendingConfig", "TransportConfig", "BASELINE",
           "baseline_config", "cosine_head", "get_method", "logit_scale_and_bias", "method_sections", "moved_keys",
           "register_method", "spatial_methods", "upgrade_model_dict"]
