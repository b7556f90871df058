"""Frozen CLIP backbones: one protocol, one loader, whichever library the model comes from.

Backbone specs understood by `load_backbone`:

- ``open_clip:RN101@openai``: an open_clip model with a pretrained tag (downloaded by open_clip);
- ``open_clip:ViT-B-16@/path/weights.safetensors``: a local weights file (.pt, .bin,
  .safetensors, or OpenAI's original TorchScript ``RN101.pt``). OpenAI weights need QuickGELU:
  tags and TorchScript files get it automatically; for a plain state-dict file converted from
  OpenAI's release, name the ``-quickgelu`` model (``open_clip:RN101-quickgelu@/path/file.pt``);
- ``hf:openai/clip-vit-base-patch16`` or ``hf:/path/to/folder``: a transformers CLIPModel;
- ``toy`` (= ``toy-vit``) and ``toy-rn``: the lab's tiny CLIPs shipped with clipml (a ViT and a
  ModifiedResNet with its attention pool), trained on the synthetic world's coco_like preset;
- ``open_clip:clipml-tiny-vit``, ``open_clip:clipml-tiny-rn``, ``hf:clipml-tiny-hf``: tiny
  random-weight test models (``allow_random=True``), like timm's test models.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Dict, Optional

import torch

from clipml.backbones.base import Dense, FrozenCLIP, TextDense, trainable_parameters
from clipml.backbones.vit_dense import DENSE_MODES, check_mode
from clipml.devices import select_device
from clipml.errors import BackboneError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TOY_MODELS = {"toy": "clipml-lab-vit", "toy-vit": "clipml-lab-vit", "toy-rn": "clipml-lab-rn"}
"""Backbone specs of the shipped toy CLIPs -> their open_clip model names (weights beside them)."""

__all__ = ["DENSE_MODES", "Dense", "FrozenCLIP", "TextDense", "load_backbone", "register_test_models",
           "trainable_parameters"]


@lru_cache(maxsize=None)
def register_test_models() -> Dict[str, dict]:
    """Register clipml's tiny open_clip configs; return the tiny transformers configs by name."""
    import open_clip

    open_clip.add_model_config(ASSETS / "model_configs")
    return {path.stem: json.loads(path.read_text()) for path in sorted((ASSETS / "hf_configs").glob("*.json"))}


def load_backbone(
    spec: str,
    image_size: Optional[int] = None,
    device: str = "cpu",
    precision: str = "fp32",
    allow_random: bool = False,
    pos_embed_resize: str = "bicubic",
    dense: str = "tokens",
    attnpool_positional: bool = True,
) -> FrozenCLIP:
    """Build a frozen CLIP from a spec (see the module docstring) at `image_size` pixels.

    Positional embeddings are interpolated to the size once, here, with `pos_embed_resize`
    ("bicubic", or "bicubic_antialias" = open_clip's force_image_size resize; see
    `resize_grid_embedding`). Loading a model that would silently run with random weights is
    refused unless `allow_random` (tests only). `device` may be "auto"; one the machine lacks is
    refused before anything is built. `dense` is how a ViT tower computes its dense map: one of
    DENSE_MODES (see clipml.backbones.vit_dense); ResNet towers have one dense map, 'tokens'
    (METHODS §1). `attnpool_positional=False` (ModifiedResNet towers only) leaves the attention
    pool's positional embedding out of the pooled feature and the dense map, as TaI-DPT scores images.
    """
    check_mode(dense)
    device = select_device(device)
    hf_tiny = register_test_models()
    if spec in TOY_MODELS:
        weights = ASSETS / f"{TOY_MODELS[spec]}.safetensors"
        if not weights.is_file():
            raise BackboneError(f"the toy CLIP weights are missing: {weights}; run tools/build_toy_clip.py")
        spec = f"open_clip:{TOY_MODELS[spec]}@{weights}"
    library, _, rest = spec.partition(":")
    if library == "open_clip" and rest:
        from clipml.backbones.open_clip import OpenCLIPBackbone, create_open_clip

        name, _, weights = rest.partition("@")
        model, weights_id = create_open_clip(name, weights or None, allow_random)
        if weights_id.startswith("file:") and name in TOY_MODELS.values():
            weights_id = "toy:" + weights_id.rsplit(":", 1)[1]
        backbone = OpenCLIPBackbone(model, name, weights_id, image_size, precision, pos_embed_resize, dense,
                                    attnpool_positional)
    elif library == "hf" and rest:
        from clipml.backbones.hf import HFCLIPBackbone, create_hf_clip

        if not attnpool_positional:
            raise BackboneError(f"{spec}: backbone.attnpool_positional=false applies to open_clip ModifiedResNet "
                                "towers; transformers' CLIP towers are ViTs")

        model, weights_id = create_hf_clip(rest, allow_random, hf_tiny)
        backbone = HFCLIPBackbone(model, rest, weights_id, image_size, precision, pos_embed_resize, dense)
    else:
        raise BackboneError(
            f"unknown backbone spec {spec!r}: expected 'open_clip:MODEL@TAG_OR_FILE', "
            f"'hf:HUB_ID_OR_FOLDER' or one of {', '.join(TOY_MODELS)}"
        )
    backbone = backbone.to(device)
    if getattr(backbone, "is_resnet", False) and backbone.device.type == "cuda":
        backbone.model.visual.to(memory_format=torch.channels_last)  # faster cuDNN convolutions
    return backbone
