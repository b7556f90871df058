"""MobileCLIP 2's FastViT image towers (timm `FastVit`, `fastvit_mci*`: MobileCLIP2-S0 .. S4) as
open_clip image towers.

The trunk ends in its final conv (a MobileOne block: conv, squeeze-excite, GELU), then timm's
classifier head averages the map and applies one linear layer (open_clip's `TimmModel.head` is
empty for these configs). Everything after the average is affine, so the dense map is that
linear layer at every location of the final map, and its mean over the grid is exactly
`encode_image` (the analogue of METHODS §1's ResNet identity). The squeeze-excite inside the
final conv reads the whole map, so each location's feature carries that global channel gate,
as the pooled one does. A convolutional net takes any multiple of its stride (32 for the
four-stage S0-S2, 64 for the five-stage S3/S4); it has one dense path ("tokens").
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from clipml.backbones.base import check_image_size
from clipml.backbones.timm_towers import TimmImageTower
from clipml.errors import BackboneError

Tensor = torch.Tensor


class FastViTTower(TimmImageTower):
    """The image tower of an open_clip `TimmModel` whose trunk is timm's average-pooled FastViT."""

    what = "timm FastViT trunks with an average pool (MobileCLIP 2 S0-S4)"

    @staticmethod
    def fits(visual: nn.Module) -> bool:
        from timm.models.fastvit import FastVit

        return isinstance(visual.trunk, FastVit)

    def __init__(self, visual: nn.Module, name: str, dense: str, resize=None) -> None:
        trunk = visual.trunk
        self.visual, self.trunk = visual, trunk
        if dense != "tokens":
            raise BackboneError(f"open_clip:{name} is a FastViT (convolutional): dense mode {dense!r} applies "
                                "to ViT towers; its dense map is the head at every location, dense='tokens'")
        affine = (nn.Linear, nn.Dropout, nn.Identity)
        head = trunk.head
        if (trunk.global_pool != "avg" or not isinstance(head.fc, affine)
                or not all(isinstance(m, affine) for m in visual.head)):
            raise BackboneError(f"open_clip:{name}: the FastViT head must be an average pool followed by affine "
                                f"layers (pool {trunk.global_pool!r}, fc {type(head.fc).__name__}) for a dense map")
        self.stride = int(trunk.feature_info[-1]["reduction"])  # a conv net: no position embedding to resize

    def set_resolution(self, image_size: int) -> Tuple[int, int]:
        grid = check_image_size(image_size, self.stride, f"a FastViT (stride {self.stride})")
        self.visual.image_size = (image_size, image_size)
        return grid

    def dense(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """(the head at every location [B, N, D], the library's pooled feature [B, D] = encode_image)."""
        trunk = self.trunk
        feature_map = trunk.forward_features(images.to(next(trunk.parameters()).dtype))  # [B, C, h, w]
        pooled = self.visual.head(trunk.forward_head(feature_map))
        tokens = self.visual.head(trunk.head.fc(feature_map.flatten(2).transpose(1, 2)))
        return tokens, pooled
