"""Image towers of open_clip models whose visual is a timm model (open_clip's TimmModel).

open_clip.py dispatches here by the visual's type; each tower class says which timm trunks it
fits (`fits`) and implements the image half of the FrozenCLIP protocol: `set_resolution` once
at load, `dense` (per-location features and the pooled one, in one pass) and `pooled`.
Add a family by writing its class (its own module, like timm_token_vit.py and fastvit.py) and listing it in `_towers`.
"""

from __future__ import annotations

from typing import Callable, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipml.backbones.base import check_image_size
from clipml.errors import BackboneError

Resize = Callable[[torch.Tensor, Tuple[int, int], int], torch.Tensor]  # (embedding, grid, extra tokens)


class TimmImageTower:
    """What every timm image tower shares: the pooled feature alone by open_clip's own forward
    (what `model.encode_image` returns), for `FrozenCLIP.encode_image`."""

    visual: nn.Module

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images.to(next(self.visual.parameters()).dtype))


class MapHeadTower(TimmImageTower):
    """A timm ViT (SigLIP, SigLIP 2) or Eva (PE-Core) trunk ending in a MAP head
    (timm's AttentionPoolLatent: one latent query attends over the tokens).

    The head computes ``z = proj(attention mixture of values)`` and then ``z + mlp(norm(z))``,
    followed by the trunk's fc_norm and head and open_clip's head (the joint-space projection).
    Dense feature of patch j: its value through the same head as if the attention were all on
    j: ``u_j = proj(v_j)``, ``t_j = u_j + mlp(norm(u_j))``, then fc_norm and the projections.
    Up to ``proj`` the head is affine, so ``z = sum_j a_j u_j`` exactly (per head: the mixture
    weights differ between attention heads and meet in ``proj``), the analogue of METHODS §1's
    ResNet pool. The residual MLP (after a LayerNorm) is not affine, so the pooled embedding is
    not the mixture of the t_j; they agree exactly when the MLP's output is constant or affine
    (tests/test_timm_towers.py). Patch tokens keep the MLP so that they live where the pooled
    embedding lives (the text features score both).
    """

    what = "timm ViT or Eva trunks ending in a MAP head (AttentionPoolLatent, one latent query)"

    @staticmethod
    def fits(visual: nn.Module) -> bool:
        from timm.layers import AttentionPoolLatent

        pool = getattr(visual.trunk, "attn_pool", None)
        return (isinstance(pool, AttentionPoolLatent) and pool.latent_len == 1 and pool.pos_embed is None
                and pool.pool == "token" and hasattr(visual.trunk, "forward_features"))

    def __init__(self, visual: nn.Module, name: str, dense: str, resize: Resize) -> None:
        if dense != "tokens":
            raise BackboneError(f"open_clip:{name} has a MAP-head image tower: its dense map is the pooling "
                                f"head's value path (dense='tokens'); dense mode {dense!r} applies to "
                                "open_clip's own ViT towers")
        trunk = visual.trunk
        if getattr(trunk, "dynamic_img_size", False):
            raise BackboneError(f"open_clip:{name}: timm trunks with dynamic image sizes are not supported")
        self.visual, self.trunk, self.pool = visual, trunk, trunk.attn_pool
        self.resize = resize
        self.prefix = int(trunk.num_prefix_tokens)  # class / register tokens before the patches
        # timm's ViT leaves its prefix tokens out of the pool (pool_include_prefix), Eva keeps them.
        self.pool_prefix = self.prefix if getattr(trunk, "pool_include_prefix", True) else 0

    def set_resolution(self, image_size: int) -> Tuple[int, int]:
        """The trunk's positional embedding (and rotary grid) for `image_size`, once; the grid."""
        trunk = self.trunk
        patch = trunk.patch_embed.patch_size[0]
        grid = check_image_size(image_size, patch, f"a timm ViT with {patch}-px patches")
        if trunk.pos_embed is not None:
            extra = 0 if trunk.no_embed_class else self.prefix
            resized = self.resize(trunk.pos_embed.data[0], grid, extra)
            trunk.pos_embed = nn.Parameter(resized[None], requires_grad=False)
        trunk.patch_embed.set_input_size(img_size=(image_size, image_size))
        rope = getattr(trunk, "rope", None)
        if rope is not None:
            rope.update_feat_shape(grid)
        self.visual.image_size = (image_size, image_size)
        return grid

    def dense(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(patch features [B, N, D], pooled [B, D]): the trunk once, the head's tail once for the
        pooled row and the patch rows together."""
        trunk, pool = self.trunk, self.pool
        x = trunk.forward_features(images.to(trunk.patch_embed.proj.weight.dtype))
        x = x[:, self.prefix - self.pool_prefix:]  # the tokens the pool reads
        batch, tokens, width = x.shape
        heads = pool.num_heads
        query = pool.q(pool.latent.expand(batch, -1, -1)).reshape(batch, 1, heads, width // heads).transpose(1, 2)
        keys, values = pool.kv(x).reshape(batch, tokens, 2, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
        mixed = F.scaled_dot_product_attention(pool.q_norm(query), pool.k_norm(keys), values)
        rows = torch.cat([mixed, values[:, :, self.pool_prefix:]], dim=2).transpose(1, 2).reshape(batch, -1, width)
        out = pool.proj(rows)
        out = out + pool.mlp(pool.norm(out))
        out = self.visual.head(trunk.head(trunk.fc_norm(out)))
        return out[:, 1:], out[:, 0]


def _towers() -> list:
    """Tower classes tried in order on an open_clip TimmModel; the first whose `fits` holds builds it."""
    from clipml.backbones.fastvit import FastViTTower
    from clipml.backbones.timm_token_vit import TokenViTTower

    return [MapHeadTower, TokenViTTower, FastViTTower]


def timm_image_tower(visual: nn.Module, name: str, dense: str, resize: Resize):
    """The tower object for an open_clip TimmModel visual, or one BackboneError naming it."""
    for tower in _towers():
        if tower.fits(visual):
            return tower(visual, name, dense, resize)
    trunk = visual.trunk
    pool = getattr(trunk, "attn_pool", None) or getattr(trunk, "global_pool", None)
    raise BackboneError(f"open_clip:{name}: timm image tower {type(trunk).__name__} (pool {pool!r}) is not supported; "
                        f"supported: {'; '.join(tower.what for tower in _towers())}")
