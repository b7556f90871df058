"""One padding policy for both SigLIP paths (clipml/backbones/tokenizer_layout.py): a tokenizer
saved to pad on the left is refused with the same error by open_clip's SigLIP 2 and transformers'
Siglip2Model, since the library's own text features for that tokenizer are not the right-padded
ones SigLIP was trained on; saved to pad on the right, prompts equal the library's features."""

import json
import shutil
from pathlib import Path

import open_clip
import pytest
import torch

from clipml.backbones import BackboneConfig, load_backbone
from clipml.backbones.shipped import register_test_models
from clipml.errors import BackboneError
from clipml.lab.tiny_siglip import write_tiny_siglip

PROMPTS = ["a photo of a dog.", "a photo of a dining table."]
REFUSAL = (r'"padding_side": "left" in .*tokenizer_config\.json; SigLIP towers were trained on texts padded on the '
           r'right.*set "padding_side": "right"')


def set_padding_side(folder, side):
    path = folder / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "padding_side": side}))


def hf_folder(root, side):
    """A tiny transformers SigLIP 2 folder whose tokenizer is saved to pad on `side`."""
    folder = write_tiny_siglip(root / "siglip2", "siglip2")
    set_padding_side(folder, side)
    return folder


def open_clip_name(root, side):
    """A tiny open_clip SigLIP 2 config whose tokenizer folder is saved to pad on `side`."""
    register_test_models()
    config = open_clip.get_model_config("clipml-tiny-siglip2")
    tokenizer = shutil.copytree(config["text_cfg"]["hf_tokenizer_name"], root / "tokenizer")
    set_padding_side(tokenizer, side)
    name = f"clipml-tiny-siglip2-{root.name}"
    config["text_cfg"] = {**config["text_cfg"], "hf_tokenizer_name": str(tokenizer)}
    (root / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(root / f"{name}.json")
    return name


def build(path, root, side):
    if path == "hf":
        return load_backbone(f"hf:{hf_folder(root, side)}")
    return load_backbone(BackboneConfig(f"open_clip:{open_clip_name(root, side)}", allow_random=True))


def library_text_features(path, backbone, texts):
    """The library's own tokenizer call and text encoder, as its documentation shows them."""
    if path == "hf":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(backbone._tokenizer.name_or_path)
        ids = tokenizer(texts, padding="max_length", max_length=64, return_tensors="pt")["input_ids"]
        return backbone.model.get_text_features(input_ids=ids).pooler_output
    name = backbone.identity["model"]
    return backbone.model.encode_text(open_clip.get_tokenizer(name)(texts))


def tokenizer_folder(path, backbone):
    tokenizer = backbone._tokenizer if path == "hf" else backbone._tokenizer.tokenizer  # open_clip's wrapper
    return Path(tokenizer.name_or_path)


@pytest.mark.parametrize("path", ["hf", "open_clip"])
def test_a_tokenizer_padding_on_the_left_is_refused_alike_by_both_paths(tmp_path, path):
    with pytest.raises(BackboneError, match=REFUSAL):
        build(path, tmp_path, "left")


@pytest.mark.parametrize("path", ["hf", "open_clip"])
def test_saved_to_pad_on_the_right_prompts_are_the_librarys_features_and_left_padding_would_differ(tmp_path, path):
    """Forcing right padding on a left-padding tokenizer would not give the library's features:
    the library's own call on the same files with "left" reads another last token."""
    backbone = build(path, tmp_path / "right", "right")
    with torch.no_grad():
        expected = library_text_features(path, backbone, PROMPTS)
        torch.testing.assert_close(backbone.encode_text(PROMPTS), expected, rtol=1e-5, atol=1e-5)
        set_padding_side(tokenizer_folder(path, backbone), "left")
        left = library_text_features(path, backbone, PROMPTS)
    assert (left - expected).abs().max() > 1e-3
