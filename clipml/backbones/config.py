"""The backbone section of the experiment config: everything `load_backbone` needs to build a
frozen tower (the device aside), saved whole with every checkpoint so the same tower comes back."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from clipml.config import require
from clipml.errors import ConfigError


@dataclasses.dataclass
class BackboneConfig:
    spec: str = "toy"  # FAMILY:SOURCE (open_clip:..., hf:...) or a toy name; see clipml.backbones
    image_size: Optional[int] = None  # None: the model's native size
    # How positional embeddings reach another image size, once at load: "bicubic" (plain torch
    # bicubic, as transformers' interpolate_pos_encoding) or "bicubic_antialias" (antialiased
    # bicubic, Pillow's kernel: exactly what open_clip's create_model(force_image_size=...)
    # does). Pooled features differ by about 1e-3 relative between the two.
    pos_embed_resize: Literal["bicubic", "bicubic_antialias"] = "bicubic"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast applies on CUDA only
    allow_random: bool = False  # only for clipml's tiny random test models
    # ViT dense map (clipml.backbones.vit_dense): "tokens" (METHODS §1), "value" (MaskCLIP),
    # "sclip" (SCLIP), "clearclip" (ClearCLIP); ResNets: "tokens" only
    dense: Literal["tokens", "value", "sclip", "clearclip"] = "tokens"
    # ModifiedResNet towers: add the attention pool's positional embedding to the layer-4 map
    # (CLIP). false: leave it out of the pooled feature and the dense map, as TaI-DPT's code scores
    # images (its attnpool(if_pos=False)); configs/*/taidpt.yaml set it. ViT towers: true only.
    attnpool_positional: bool = True

    def __post_init__(self) -> None:
        require(bool(self.spec), "backbone.spec", self.spec, "FAMILY:SOURCE or a short name such as toy")
        require(self.image_size is None or self.image_size >= 1, "backbone.image_size", self.image_size,
                "a size in pixels or null")
        if self.spec.startswith("hf:") and not self.attnpool_positional:
            raise ConfigError("backbone.attnpool_positional=false applies to open_clip ModifiedResNet towers; "
                              f"{self.spec} is a transformers CLIP (a ViT): leave it true")
