"""Models shipped with clipml: the lab's toy CLIPs (weights in clipml/assets) and the configs of
tiny random test models, registered with open_clip and read for transformers."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Dict

from clipml.errors import BackboneError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TOY_MODELS = {"toy": "clipml-lab-vit", "toy-vit": "clipml-lab-vit", "toy-rn": "clipml-lab-rn"}
"""Backbone specs of the shipped toy CLIPs -> their open_clip model names (weights beside them)."""


@lru_cache(maxsize=None)
def register_test_models() -> Dict[str, dict]:
    """Register clipml's tiny open_clip configs (those with timm image towers: tiny_towers.py);
    return the tiny transformers configs by name."""
    import open_clip

    from clipml.backbones import tiny_timm  # noqa: F401  (registers the tiny timm towers the configs name)
    from clipml.backbones.tiny_towers import register_tiny_trunks, write_tiny_configs

    open_clip.add_model_config(ASSETS / "model_configs")
    register_tiny_trunks()
    open_clip.add_model_config(write_tiny_configs())
    return {path.stem: json.loads(path.read_text()) for path in sorted((ASSETS / "hf_configs").glob("*.json"))}


def toy_spec(model_name: str) -> str:
    """The open_clip spec of a toy CLIP: its model name and the weights file shipped beside it."""
    weights = ASSETS / f"{model_name}.safetensors"
    if not weights.is_file():
        raise BackboneError(f"the toy CLIP weights are missing: {weights}; run tools/build_toy_clip.py")
    return f"open_clip:{model_name}@{weights}"
