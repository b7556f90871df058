"""Class-token timm ViTs as open_clip image towers: EVA-02 (timm `Eva`: rotary position
embeddings in attention, sub-LN, SwiGLU) and MobileCLIP 2's ViTs (timm `VisionTransformer`,
MobileCLIP2-B's hybrid conv stem included).

The dense map is the patch tokens after the trunk's final norm through the same head as the
class token (timm's `fc_norm` and classifier `head`, then open_clip's `TimmModel.head`), so mode
"tokens" reads `encode_image`'s class token and the patches from one pass; the other modes
(vit_dense.py) rebuild the last block from the library's own modules, with EVA's rope applied
to q and k where the block forms them.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from clipml.backbones.base import check_image_size
from clipml.backbones.vit_dense import LastBlock, last_block
from clipml.backbones.timm_towers import TimmImageTower
from clipml.errors import BackboneError

Tensor = torch.Tensor


def _scale(gamma: Optional[nn.Parameter]):
    """EVA's optional layer scale as a callable (identity where the block has none)."""
    return (lambda t: t) if gamma is None else (lambda t: gamma * t)


class TokenViTTower(TimmImageTower):
    """The image tower of an open_clip `TimmModel` whose trunk is a class-token timm ViT."""

    what = "timm ViT or Eva trunks pooling their class token (EVA-02, MobileCLIP 2 B / L-14)"

    @staticmethod
    def fits(visual: nn.Module) -> bool:
        from timm.models.eva import Eva
        from timm.models.vision_transformer import VisionTransformer

        return isinstance(visual.trunk, (Eva, VisionTransformer)) and getattr(visual.trunk, "attn_pool", None) is None

    def __init__(self, visual: nn.Module, name: str, dense: str, resize) -> None:
        from timm.models.eva import Eva

        trunk = visual.trunk
        self.visual, self.trunk, self.mode, self.resize = visual, trunk, dense, resize
        self.is_eva = isinstance(trunk, Eva)
        if trunk.global_pool != "token" or trunk.num_prefix_tokens != 1:
            raise BackboneError(f"open_clip:{name}: timm tower {type(trunk).__name__} pools {trunk.global_pool!r} "
                                f"over {trunk.num_prefix_tokens} prefix tokens; only class-token pooling "
                                "(one class token, no register tokens) has a dense map here")
        if self.is_eva and getattr(trunk, "rope_mixed", False):
            raise BackboneError(f"open_clip:{name}: per-layer (mixed) rotary embeddings are not supported")
        if self.mode != "tokens":
            self._check_last_block(name)
        self.stride = int(trunk.patch_embed.feat_ratio())

    def _check_last_block(self, name: str) -> None:
        from timm.layers import Attention
        from timm.models.eva import EvaAttention, EvaBlock
        from timm.models.vision_transformer import Block

        block = self.trunk.blocks[-1]
        wanted = (EvaBlock, EvaAttention) if self.is_eva else (Block, Attention)
        attention = block.attn
        if (type(block) is not wanted[0] or type(attention) is not wanted[1] or attention.gate is not None
                or attention.scale != attention.head_dim ** -0.5):
            raise BackboneError(f"open_clip:{name}: dense mode {self.mode!r} needs timm's {wanted[0].__name__} "
                                f"with {wanted[1].__name__}, this tower ends in {type(block).__name__}")

    # Resolution -----------------------------------------------------------------------------
    def set_resolution(self, image_size: int) -> Tuple[int, int]:
        """Resample the absolute position embedding (and point the rope at the new grid), once."""
        trunk = self.trunk
        grid = check_image_size(image_size, self.stride, f"a ViT with {self.stride}-px patches")
        if tuple(trunk.patch_embed.grid_size) != grid:
            if trunk.pos_embed is not None:
                extra = 0 if trunk.no_embed_class else trunk.num_prefix_tokens
                resized = self.resize(trunk.pos_embed.data[0], grid, extra)
                trunk.pos_embed = nn.Parameter(resized[None], requires_grad=False)
            trunk.patch_embed.set_input_size(img_size=(image_size, image_size))
            if getattr(trunk, "rope", None) is not None:
                trunk.rope.update_feat_shape(grid)  # timm rescales rope frequencies to its reference grid
        self.visual.image_size = (image_size, image_size)
        return grid

    # Dense ----------------------------------------------------------------------------------
    def dense(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """(patch tokens [B, N, D] in the joint space, the pooled feature [B, D] = encode_image)."""
        trunk = self.trunk
        x = trunk.patch_embed(images.to(trunk.cls_token.dtype))
        if self.is_eva:
            x, rope = trunk._pos_embed(x)
        else:
            x, rope = trunk.patch_drop(trunk._pos_embed(x)), None
        x = trunk.norm_pre(x)
        blocks = list(trunk.blocks)
        for block in blocks if self.mode == "tokens" else blocks[:-1]:
            x = block(x, rope=rope) if self.is_eva else block(x)
        if self.mode == "tokens":
            library, patches = x[:, :1], x[:, 1:]
        else:
            library, patches = last_block(self._last_block(rope), x, self.mode, rows=1)
        pooled = self.visual.head(trunk.forward_head(trunk.norm(library)))
        tokens = self.visual.head(trunk.head(trunk.fc_norm(trunk.norm(patches))))
        return tokens, pooled

    def _last_block(self, rope: Optional[Tensor]) -> LastBlock:
        block = self.trunk.blocks[-1]
        attention = block.attn
        if self.is_eva:
            ls_1, ls_2 = _scale(block.gamma_1), _scale(block.gamma_2)
        else:
            ls_1, ls_2 = block.ls1, block.ls2
        return LastBlock(
            ln_1=block.norm1, qkv=lambda h: self._qkv(attention, h, rope),
            out_proj=lambda a: attention.proj(attention.norm(a)),  # EVA's sub-LN sits before proj
            ln_2=block.norm2, mlp=block.mlp, heads=attention.num_heads, ls_1=ls_1, ls_2=ls_2,
        )

    def _qkv(self, attention: nn.Module, h: Tensor, rope: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """q, k, v [B, L, W] as the library's attention forms them: its projections (fused or not),
        its q/k norms, and EVA's rope on the patch positions (the class token is not rotated)."""
        from timm.layers import apply_rot_embed_cat

        if getattr(attention, "qkv", None) is None:
            q, k, v = attention.q_proj(h), attention.k_proj(h), attention.v_proj(h)
        else:
            qkv = attention.qkv(h)
            if getattr(attention, "q_bias", None) is not None:
                qkv = qkv + torch.cat((attention.q_bias, attention.k_bias, attention.v_bias))
            q, k, v = qkv.chunk(3, dim=-1)
        batch, length, width = h.shape[0], h.shape[1], q.shape[-1]
        heads = attention.num_heads

        def per_head(t: Tensor) -> Tensor:
            return t.reshape(batch, length, heads, width // heads).transpose(1, 2)

        q, k = attention.q_norm(per_head(q)), attention.k_norm(per_head(k))
        if rope is not None:
            half = getattr(attention, "rotate_half", False)
            q, k = (torch.cat([t[:, :, :1], apply_rot_embed_cat(t[:, :, 1:], rope, half=half)], dim=2).type_as(v)
                    for t in (q, k))
        merge = (lambda t: t.transpose(1, 2).reshape(batch, length, width))
        return merge(q), merge(k), v
