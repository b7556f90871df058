"""Tiny random timm image towers for clipml's test models: the architectures of EVA-02's and
MobileCLIP 2's towers at a few thousand parameters. open_clip's TimmModel builds its tower from a
timm model name alone (no size arguments), so the tiny sizes are timm model variants registered
under clipml_* names; the JSON configs in clipml/assets/model_configs name them."""

from __future__ import annotations

from functools import partial

from timm.layers import LayerNorm2d
from timm.models import register_model
from timm.models.eva import eva02_base_patch16_clip_224
from timm.models.fastvit import RepConditionalPosEnc, fastvit_mci0, fastvit_mci3
from timm.models.vision_transformer import vit_large_patch14_clip_224
from timm.models.vision_transformer_hybrid import ConvStem, _create_vision_transformer_hybrid
from torch import nn

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


@register_model
def clipml_tiny_eva02(pretrained: bool = False, **kwargs):
    """EVA-02's CLIP tower (rope, SwiGLU with its inner norm, sub-LN attention) at 32 px, 8-px patches."""
    return eva02_base_patch16_clip_224(pretrained=False, **dict(TINY_VIT, ref_feat_shape=(4, 4), **kwargs))


@register_model
def clipml_tiny_vit_clip(pretrained: bool = False, **kwargs):
    """The CLIP ViT of MobileCLIP2-L-14 (pre-norm, class token) at 32 px, 8-px patches."""
    return vit_large_patch14_clip_224(pretrained=False, **dict(TINY_VIT, **kwargs))


@register_model
def clipml_tiny_vit_mci(pretrained: bool = False, **kwargs):
    """MobileCLIP2-B's hybrid ViT (a stride-16 conv stem, no position for the class token) at 32 px."""
    stem = ConvStem(channels=(8, 8, 32), stride=(4, 2, 2), kernel_size=(4, 2, 2), padding=0,
                    in_chans=kwargs.get("in_chans", 3), act_layer=nn.GELU)
    args = dict(img_size=32, embed_dim=32, depth=2, num_heads=2, no_embed_class=True)
    return _create_vision_transformer_hybrid("clipml_tiny_vit_mci", backbone=stem, embed_args=dict(proj=False),
                                             pretrained=False, **dict(args, **kwargs))


@register_model
def clipml_tiny_fastvit_mci(pretrained: bool = False, **kwargs):
    """MobileCLIP2-S0..S2's FastViT (repmixer stages, an attention stage, SE final conv) at stride 32."""
    args = dict(layers=(1, 1, 1, 1), embed_dims=(8, 16, 32, 64), mlp_ratios=(2, 2, 2, 2))
    return fastvit_mci0(pretrained=False, **dict(args, **kwargs))


@register_model
def clipml_tiny_fastvit_mci5(pretrained: bool = False, **kwargs):
    """MobileCLIP2-S3/S4's five-stage FastViT (LayerNorm2d, stride 64)."""
    args = dict(layers=(1, 1, 1, 1, 1), embed_dims=(8, 16, 32, 32, 64), mlp_ratios=(2,) * 5,
                pos_embs=(None, None, None, partial(RepConditionalPosEnc, spatial_shape=(3, 3)),
                          partial(RepConditionalPosEnc, spatial_shape=(3, 3))),
                norm_layer=partial(LayerNorm2d, eps=1e-5))
    return fastvit_mci3(pretrained=False, **dict(args, **kwargs))
