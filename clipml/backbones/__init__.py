"""Frozen CLIP backbones: one contract (`FrozenCLIP`), one loader, families registered by name.

Backbone specs understood by `load_backbone`:

- ``open_clip:RN101@openai``: an open_clip model with a pretrained tag (downloaded by open_clip);
- ``open_clip:ViT-B-16@/path/weights.safetensors``: a local weights file (.pt, .bin,
  .safetensors, or OpenAI's original TorchScript ``RN101.pt``). OpenAI weights need QuickGELU:
  tags and TorchScript files get it automatically; for a plain state-dict file converted from
  OpenAI's release, name the ``-quickgelu`` model (``open_clip:RN101-quickgelu@/path/file.pt``);
- ``hf:openai/clip-vit-base-patch16`` or ``hf:/path/to/folder``: a transformers CLIPModel;
- ``hf:google/siglip2-base-patch16-224`` or a folder whose config.json says model_type "siglip" or
  "siglip2": a transformers SiglipModel / Siglip2Model (clipml.backbones.hf_siglip);
- ``toy`` (= ``toy-vit``) and ``toy-rn``: the lab's tiny CLIPs shipped with clipml (a ViT and a
  ModifiedResNet with its attention pool), trained on the synthetic world's coco_like preset;
- ``open_clip:clipml-tiny-vit``, ``open_clip:clipml-tiny-rn``, ``hf:clipml-tiny-hf``: tiny
  random-weight test models (``allow_random=True``), like timm's test models;
  ``open_clip:clipml-tiny-eva02`` and ``open_clip:clipml-tiny-mobileclip2-{b,l,s,s3}`` the same for
  the timm image towers of EVA-02 and MobileCLIP 2 (``open_clip:EVA02-B-16@TAG``, ...).

Each family (the part before ':') is a module here that registers its builder with
``@register_family`` (clipml.backbones.registry); its adapter subclasses `FrozenCLIP`.
"""

from __future__ import annotations

from typing import Union

import torch

from clipml.backbones import hf, hf_siglip, open_clip  # noqa: F401  (the built-in families register themselves)
from clipml.backbones.base import Dense, FrozenCLIP, ImagePreprocess, TextDense, trainable_parameters
from clipml.backbones.config import BackboneConfig
from clipml.backbones.registry import FAMILIES, register_alias, register_family, resolve
from clipml.backbones.shipped import TOY_MODELS, register_test_models
from clipml.backbones.vit_dense import DENSE_MODES, check_mode
from clipml.devices import select_device

__all__ = ["DENSE_MODES", "FAMILIES", "TOY_MODELS", "BackboneConfig", "Dense", "FrozenCLIP", "ImagePreprocess", "TextDense",
           "load_backbone", "register_alias", "register_family", "register_test_models", "trainable_parameters"]


def load_backbone(config: Union[BackboneConfig, str], device: str = "cpu") -> FrozenCLIP:
    """Build the frozen CLIP a backbone config describes (a bare spec string: its defaults).

    The config's family (the spec before ':') builds the tower; positional embeddings are
    interpolated to `image_size` once, with `pos_embed_resize`; `dense` is how a ViT tower
    computes its dense map (clipml.backbones.vit_dense). Loading a model that would silently run
    with random weights is refused unless `allow_random` (tests only). `device` may be "auto";
    one the machine lacks is refused before anything is built.
    """
    if isinstance(config, str):
        config = BackboneConfig(spec=config)
    check_mode(config.dense)
    device = select_device(device)
    family, source = resolve(config.spec)
    backbone = family.build(source, config).to(device)
    if getattr(backbone, "is_resnet", False) and backbone.device.type == "cuda":
        backbone.model.visual.to(memory_format=torch.channels_last)  # faster cuDNN convolutions
    return backbone
