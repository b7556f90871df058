"""Tiny random test configs of the timm-backed open_clip families (SigLIP, SigLIP 2, PE-Core):
the real timm architectures at toy sizes, registered with timm, and tiny word-level tokenizers
saved as transformers tokenizer folders, which the open_clip configs name as their
`hf_tokenizer_name` (real SigLIP models name a hub tokenizer; these work offline)."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Tuple

# timm name of each tiny trunk -> (the real architecture it shrinks, the sizes that replace its own)
TINY_TRUNKS: Dict[str, Tuple[str, dict]] = {
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


PE_CORE = {"embed_dim": 32, "custom_text": True,
           "vision_cfg": {"image_size": 32, "timm_model_name": "clipml_tiny_pe_core", "timm_model_pretrained": False,
                          "timm_pool": "map", "timm_proj": None},
           "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2}}


def register_tiny_trunks() -> None:
    """Register the tiny trunks with timm: each is its real architecture's builder at toy sizes."""
    import timm
    from timm.models import register_model

    def builder(name: str, real: str, sizes: dict):
        def build(pretrained: bool = False, **kwargs):
            return timm.create_model(real, pretrained=False, **dict(sizes, **kwargs))

        build.__name__ = name
        return build

    for name, (real, sizes) in TINY_TRUNKS.items():
        if not timm.is_model(name):
            register_model(builder(name, real, sizes))


def save_tokenizer(folder: Path, specials, template: str, pad: str, eos: str, bos) -> int:
    """A word-level tokenizer over WORDS saved as a transformers tokenizer folder; its vocabulary size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*specials, *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    marks = [token for token in (bos, eos) if token]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(token, vocab[token]) for token in marks])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token=pad, eos_token=eos,
                                   bos_token=bos, padding_side="right")
    fast.save_pretrained(str(folder))
    return len(vocab)


def write_tiny_configs() -> Path:
    """The tiny open_clip configs (and the tokenizer folders they name) in a new temporary folder,
    for open_clip.add_model_config."""
    root = Path(tempfile.mkdtemp(prefix="clipml-tiny-towers-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)  # a few KB, removed when the process ends
    configs = {"clipml-tiny-pe-core": PE_CORE}
    for name, convention in TOKENIZERS.items():
        folder = root / f"tokenizer-{name}"
        vocab = save_tokenizer(folder, **convention)
        configs[f"clipml-tiny-{name}"] = _siglip_config(folder, vocab)
    for name, config in configs.items():
        (root / f"{name}.json").write_text(json.dumps(config, indent=1))
    return root
