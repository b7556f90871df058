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
def tiny_hf_configs() -> Dict[str, dict]:
    """The tiny transformers test configs by name (JSON files beside clipml)."""
    return {path.stem: json.loads(path.read_text()) for path in sorted((ASSETS / "hf_configs").glob("*.json"))}


@lru_cache(maxsize=None)
def register_shipped_models() -> None:
    """Register the open_clip configs shipped as files: the toys and the tiny open_clip-tower test
    models. Cheap: every open_clip build calls it."""
    import open_clip

    open_clip.add_model_config(ASSETS / "model_configs")


@lru_cache(maxsize=None)
def register_test_models() -> Dict[str, dict]:
    """Register every tiny open_clip test config: the shipped ones, and the tiny timm-tower ones
    written at run time with their timm trunks and tokenizer folders (EVA-02, MobileCLIP 2, SigLIP,
    SigLIP 2, PE-Core: tiny_towers.py; only when a tiny model is asked for, so other builds write
    nothing); return the tiny transformers configs by name."""
    import open_clip

    from clipml.backbones.tiny_towers import register_tiny_trunks, write_tiny_configs

    register_shipped_models()
    register_tiny_trunks()
    open_clip.add_model_config(write_tiny_configs())
    return tiny_hf_configs()


def toy_spec(model_name: str) -> str:
    """The open_clip spec of a toy CLIP: its model name and the weights file shipped beside it."""
    weights = ASSETS / f"{model_name}.safetensors"
    if not weights.is_file():
        raise BackboneError(f"the toy CLIP weights are missing: {weights}; run tools/build_toy_clip.py")
    return f"open_clip:{model_name}@{weights}"
