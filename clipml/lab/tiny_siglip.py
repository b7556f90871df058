"""Tiny random transformers SigLIP / SigLIP 2 model folders (config, weights, tokenizer, image
processor), written the way the hub's snapshots are laid out, so `hf:<folder>` loads them offline:
the real tokenizers (SentencePiece, Gemma) and weights come from the hub, which tests cannot reach.

The tokenizers are character-level over a tiny vocabulary. SigLIP's mimics its SentencePiece one
(a word-start marker before every word, an end token that is also the padding). SigLIP 2's is the
library's own `Siglip2Tokenizer` (Gemma's pipeline: no marker before the first word, so ``X X`` is
two different tokens ``x`` and ``▁x``; a begin token, no end token, its own padding id; saved to
pad on the right, as the hub's SigLIP 2 tokenizers are, though the class pads on the left by default).
SigLIP's is built by the word-level writer of the open_clip tiny towers (tiny_towers.py) over
characters; SigLIP 2's cannot be: its first-word rule is the Gemma class's own pipeline, which the
hf path must load as `Siglip2Tokenizer` to be tested."""

from __future__ import annotations

import string
from pathlib import Path

import torch

from clipml.backbones.tiny_towers import word_level_tokenizer

MARK = "\u2581"  # SentencePiece's word-start marker
CHARACTERS = string.ascii_lowercase + string.digits + string.punctuation
TINY_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_IMAGE_SIZE, TINY_PATCH = 32, 8
CONTEXT_LENGTH = 64  # SigLIP pads every text to 64 tokens


def tiny_tokenizer(model_type: str):
    """A character-level tokenizer in the style of `model_type`'s real one (module docstring)."""
    pieces = [*CHARACTERS, *(MARK + c for c in CHARACTERS)]
    if model_type == "siglip2":
        from transformers import Siglip2Tokenizer

        vocab = {p: i for i, p in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", MARK, *pieces])}
        return Siglip2Tokenizer(vocab=vocab, merges=[(MARK, c) for c in CHARACTERS], add_bos_token=True,
                                model_max_length=CONTEXT_LENGTH, padding_side="right")
    from tokenizers import Regex, pre_tokenizers

    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=MARK, prepend_scheme="always"),
        pre_tokenizers.Split(Regex(f"{MARK}?[^{MARK}]"), behavior="isolated"),  # one token per character
    ])
    return word_level_tokenizer(["<pad>", "</s>", "<unk>", *pieces], pre_tokenizer, "$A </s>",
                                model_max_length=CONTEXT_LENGTH, eos_token="</s>", pad_token="</s>")


def tiny_siglip_model(model_type: str, tokenizer=None, seed: int = 0, tower: dict = TINY_TOWER,
                      image_size: int = TINY_IMAGE_SIZE, patch_size: int = TINY_PATCH):
    """A random SiglipModel ("siglip") or Siglip2Model ("siglip2") of `tower`'s sizes, logit scale
    and bias drawn too (the library's init sets them to constants)."""
    from transformers import Siglip2Config, Siglip2Model, SiglipConfig, SiglipModel

    tokenizer = tokenizer or tiny_tokenizer(model_type)
    text = {**tower, "vocab_size": len(tokenizer), "max_position_embeddings": CONTEXT_LENGTH,
            "projection_size": tower["hidden_size"], "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    vision = {**tower, "patch_size": patch_size}
    if model_type == "siglip":
        config, build = SiglipConfig(text_config=text, vision_config={**vision, "image_size": image_size}), SiglipModel
    else:
        grid = image_size // patch_size
        config = Siglip2Config(text_config=text, vision_config={**vision, "num_patches": grid * grid})
        build = Siglip2Model
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build(config)
        with torch.no_grad():
            model.logit_scale.fill_(float(torch.empty(()).uniform_(1.0, 2.5)))
            model.logit_bias.fill_(float(torch.empty(()).uniform_(-3.0, 0.0)))
    return model.eval()


def tiny_image_processor(model_type: str, image_size: int = TINY_IMAGE_SIZE, patch_size: int = TINY_PATCH):
    """The image processor a SigLIP (a fixed size) or SigLIP 2 (NaFlex: a patch budget, here the
    square image's) folder ships."""
    from transformers import Siglip2ImageProcessor, SiglipImageProcessor

    if model_type == "siglip":
        return SiglipImageProcessor(size={"height": image_size, "width": image_size}, resample=3)
    return Siglip2ImageProcessor(patch_size=patch_size, max_num_patches=(image_size // patch_size) ** 2, resample=2)


def write_tiny_siglip(folder: Path, model_type: str = "siglip", seed: int = 0) -> Path:
    """A hub-like folder of a tiny random `model_type` model: config.json, weights, tokenizer and
    preprocessor_config.json."""
    folder = Path(folder)
    tokenizer = tiny_tokenizer(model_type)
    tiny_siglip_model(model_type, tokenizer, seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tiny_image_processor(model_type).save_pretrained(folder)
    return folder
