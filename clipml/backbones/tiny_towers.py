"""Tiny random test configs of the timm-backed open_clip families (EVA-02, MobileCLIP 2, SigLIP,
SigLIP 2, PE-Core): the real timm architectures at toy sizes, registered with timm under clipml_*
names (open_clip's TimmModel builds its tower from a timm name alone, no size arguments), their
open_clip configs, and tiny word-level tokenizers saved as transformers tokenizer folders, which
the SigLIP configs name as their `hf_tokenizer_name` (real SigLIP models name a hub tokenizer;
these work offline). All written at run time, only when a tiny model is asked for."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Callable, Dict, Tuple, Union

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _tiny_vit_mci(pretrained: bool = False, **kwargs):
    """MobileCLIP2-B's hybrid ViT (a stride-16 conv stem, no position for the class token): timm's
    vit_base_mci_224 fixes its stem's widths, so the tiny one is put together from the same parts."""
    from timm.models.vision_transformer_hybrid import ConvStem, _create_vision_transformer_hybrid
    from torch import nn

    stem = ConvStem(channels=(8, 8, 32), stride=(4, 2, 2), kernel_size=(4, 2, 2), padding=0,
                    in_chans=kwargs.get("in_chans", 3), act_layer=nn.GELU)
    return _create_vision_transformer_hybrid("clipml_tiny_vit_mci", backbone=stem, embed_args=dict(proj=False),
                                             pretrained=False, **kwargs)


def _fastvit_mci5_sizes() -> dict:
    """MobileCLIP2-S3/S4's five-stage FastViT (LayerNorm2d, stride 64) at toy widths."""
    from timm.layers import LayerNorm2d
    from timm.models.fastvit import RepConditionalPosEnc

    return dict(layers=(1,) * 5, embed_dims=(8, 16, 32, 32, 64), mlp_ratios=(2,) * 5,
                pos_embs=(None, None, None, partial(RepConditionalPosEnc, spatial_shape=(3, 3)),
                          partial(RepConditionalPosEnc, spatial_shape=(3, 3))),
                norm_layer=partial(LayerNorm2d, eps=1e-5))


# timm name of each tiny trunk -> (the real architecture it shrinks: a timm name, or a builder where
# timm fixes a size; the sizes that replace its own, or a function of them where they name timm layers)
TINY_TRUNKS: Dict[str, Tuple[Union[str, Callable], Union[dict, Callable[[], dict]]]] = {
    "clipml_tiny_eva02": ("eva02_base_patch16_clip_224", dict(TINY_VIT, ref_feat_shape=(4, 4))),
    "clipml_tiny_vit_clip": ("vit_large_patch14_clip_224", TINY_VIT),  # MobileCLIP2-L-14's CLIP ViT
    "clipml_tiny_vit_mci": (_tiny_vit_mci, dict(img_size=32, embed_dim=32, depth=2, num_heads=2, no_embed_class=True)),
    "clipml_tiny_fastvit_mci": ("fastvit_mci0",  # MobileCLIP2-S0..S2: repmixer stages, an attention stage
                                dict(layers=(1, 1, 1, 1), embed_dims=(8, 16, 32, 64), mlp_ratios=(2, 2, 2, 2))),
    "clipml_tiny_fastvit_mci5": ("fastvit_mci3", _fastvit_mci5_sizes),
    "clipml_tiny_siglip": ("vit_base_patch16_siglip_224",
                           dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)),
    "clipml_tiny_pe_core": ("vit_pe_core_base_patch16_224",
                            dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                                 ref_feat_shape=(4, 4), attn_pool_num_heads=4)),
}

WORDS = ("a an the photo of picture this is and with on in dog cat car person bird dining table chair bus "
         "train boat sofa plant bottle tv horse sheep cow bicycle motorbike aeroplane pottedplant "
         "diningtable tvmonitor x there one two").split()

# Tokenizer conventions of the tiny towers: SigLIP's (T5: the end token pads) and one with a
# start token and its own padding id (so the adapter must read both from the tokenizer).
TOKENIZERS = {
    "siglip": dict(specials=["<unk>", "</s>"], template="$A </s>", pad="</s>", eos="</s>", bos=None),
    "siglip2": dict(specials=["<pad>", "<eos>", "<bos>", "<unk>"], template="<bos> $A <eos>",
                    pad="<pad>", eos="<eos>", bos="<bos>"),
}


def _timm_clip(trunk: str, pool: str, image_size: int, causal_text: bool) -> dict:
    """An open_clip config of a tiny timm trunk beside open_clip's own tiny text tower."""
    return {"embed_dim": 32, "custom_text": True,
            "vision_cfg": {"timm_model_name": trunk, "timm_model_pretrained": False, "timm_pool": pool,
                           "timm_proj": None, "image_size": image_size},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2,
                         "no_causal_mask": not causal_text}}


TIMM_CLIPS = {
    "clipml-tiny-eva02": _timm_clip("clipml_tiny_eva02", "token", 32, causal_text=True),
    "clipml-tiny-mobileclip2-b": _timm_clip("clipml_tiny_vit_mci", "token", 32, causal_text=True),
    "clipml-tiny-mobileclip2-l": _timm_clip("clipml_tiny_vit_clip", "token", 32, causal_text=False),
    "clipml-tiny-mobileclip2-s": _timm_clip("clipml_tiny_fastvit_mci", "avg", 64, causal_text=False),
    "clipml-tiny-mobileclip2-s3": _timm_clip("clipml_tiny_fastvit_mci5", "avg", 128, causal_text=False),
    "clipml-tiny-pe-core": {"embed_dim": 32, "custom_text": True,
                            "vision_cfg": {"image_size": 32, "timm_model_name": "clipml_tiny_pe_core",
                                           "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": None},
                            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 4,
                                         "layers": 2}},
}
"""The open_clip configs of the tiny timm towers that use open_clip's own tokenizer."""


def _text_cfg(tokenizer: Path, vocab: int) -> dict:
    """SigLIP's text tower (no causal mask, pooled at the last position, padded to the context)."""
    return {"context_length": 16, "vocab_size": vocab, "hf_tokenizer_name": str(tokenizer),
            "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 32, "heads": 4, "layers": 2,
            "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6},
            "act_kwargs": {"approximate": "tanh"}}


def _siglip_config(tokenizer: Path, vocab: int) -> dict:
    return {"embed_dim": 64, "init_logit_bias": -10, "custom_text": True,
            "vision_cfg": {"image_size": 32, "timm_model_name": "clipml_tiny_siglip", "timm_model_pretrained": False,
                           "timm_pool": "map", "timm_proj": "none"},
            "text_cfg": _text_cfg(tokenizer, vocab)}


def register_tiny_trunks() -> None:
    """Register the tiny trunks with timm: each is its real architecture's builder at toy sizes."""
    import timm
    from timm.models import model_entrypoint, register_model

    def builder(name: str, real, sizes):
        def build(pretrained: bool = False, **kwargs):
            create = model_entrypoint(real) if isinstance(real, str) else real
            return create(pretrained=False, **dict(sizes() if callable(sizes) else sizes, **kwargs))

        build.__name__ = name
        return build

    for name, (real, sizes) in TINY_TRUNKS.items():
        if not timm.is_model(name):
            register_model(builder(name, real, sizes))


def word_level_tokenizer(vocabulary, pre_tokenizer, template: str, **special_tokens):
    """A transformers fast tokenizer with one id per entry of `vocabulary` (unknowns: "<unk>"),
    lowercasing, split by `pre_tokenizer`, the special tokens of `template` ("$A </s>") around
    each text; `special_tokens` (pad_token=..., model_max_length=...) go to PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(vocabulary)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizer
    marks = [token for token in template.split() if token != "$A"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(token, vocab[token]) for token in marks])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", **special_tokens)


def save_tokenizer(folder: Path, specials, template: str, pad: str, eos: str, bos) -> int:
    """A word-level tokenizer over WORDS saved as a transformers tokenizer folder; its vocabulary size."""
    from tokenizers import pre_tokenizers

    tokenizer = word_level_tokenizer([*specials, *WORDS], pre_tokenizers.Whitespace(), template, pad_token=pad,
                                     eos_token=eos, bos_token=bos, padding_side="right")
    tokenizer.save_pretrained(str(folder))
    return len(tokenizer)


def write_tiny_configs() -> Path:
    """The tiny open_clip configs (and the tokenizer folders they name) in a new temporary folder,
    for open_clip.add_model_config."""
    root = Path(tempfile.mkdtemp(prefix="clipml-tiny-towers-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # a few KB, removed when the process ends
    configs = dict(TIMM_CLIPS)
    for name, convention in TOKENIZERS.items():
        folder = root / f"tokenizer-{name}"
        vocab = save_tokenizer(folder, **convention)
        configs[f"clipml-tiny-{name}"] = _siglip_config(folder, vocab)
    for name, config in configs.items():
        (root / f"{name}.json").write_text(json.dumps(config, indent=1))
    return root
