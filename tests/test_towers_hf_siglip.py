"""transformers SiglipModel / Siglip2Model behind `hf:` (clipml/backbones/hf_siglip.py), on tiny
random folders written as the hub lays them out (clipml/lab/tiny_siglip.py). Oracles: the library's
own get_image_features, get_text_features, forward logits, image processor and MAP head."""

import importlib.util
import json
import shutil

import pytest
import torch
from PIL import Image

from clipml import Predictor
from clipml.backbones import BackboneConfig, load_backbone, trainable_parameters
from clipml.backbones.hf import HFCLIPBackbone
from clipml.backbones.hf_siglip import HFSiglipBackbone
from clipml.config import load_config
from clipml.engine.train import train
from clipml.errors import BackboneError
from clipml.experiment import ExperimentConfig
from clipml.lab.tiny_siglip import TINY_PATCH, tiny_image_processor, write_tiny_siglip
from clipml.lab.world import write_synthetic_dataset
from clipml.methods import METHODS
from clipml.methods.base import logit_scale_and_bias
from clipml.model import ModelConfig, MultiLabelCLIP
from clipml.prompts import ContextPrompts
from conftest import TINY_RUN, tiny_backbone

TOWERS = ["siglip", "siglip2"]  # this family's tiny towers (config.json model_type); a parameter list to merge
CLASSES = ["dog", "dining table", "x"]
PROMPTS = [f"a photo of a {name}." for name in CLASSES]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("siglip")
    return {kind: write_tiny_siglip(root / f"tiny-{kind}", kind) for kind in TOWERS}


@pytest.fixture(scope="module")
def towers(folders):
    return {kind: load_backbone(f"hf:{folder}") for kind, folder in folders.items()}


def images_for(backbone, count=2, seed=1):
    size = backbone.image_size
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def library_inputs(backbone, images):
    """What the library's vision tower takes for `images`: pixels (SigLIP), or (SigLIP 2) the image
    processor's patch layout, built with the library's own convert_image_to_patches."""
    if not backbone.naflex:
        return {"pixel_values": images}
    from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

    patches = torch.stack([convert_image_to_patches(image, TINY_PATCH) for image in images])
    side = backbone.image_size // TINY_PATCH
    return {"pixel_values": patches, "pixel_attention_mask": torch.ones(patches.shape[:2], dtype=torch.long),
            "spatial_shapes": torch.tensor([[side, side]] * len(images))}


def library_text_ids(backbone, texts):
    """The model's tokenizer, loaded afresh by the library from its folder, called as the model card
    says: padding to max_length (64)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbone._tokenizer.name_or_path)
    return tokenizer(list(texts), padding="max_length", max_length=64, return_tensors="pt")["input_ids"]


# Loading, freezing, identity, preprocessing ---------------------------------------------------------
@pytest.mark.parametrize("kind", TOWERS)
def test_hf_spec_dispatches_on_the_model_type_and_freezes(towers, folders, kind):
    backbone = towers[kind]
    assert isinstance(backbone, HFSiglipBackbone) and backbone.naflex == (kind == "siglip2")
    assert isinstance(tiny_backbone("hf_vit"), HFCLIPBackbone)  # a CLIP folder or test config stays CLIP
    assert trainable_parameters(backbone) == [] and not backbone.model.training
    backbone.train()
    assert not backbone.model.training
    identity = backbone.identity
    assert identity["library"] == "transformers" and identity["image_size"] == 32 and identity["embed_dim"] == 32
    assert identity["weights"].startswith(f"hf-folder:tiny-{kind}:")


def test_other_weights_under_the_same_folder_name_are_told_apart(tmp_path, towers, folders):
    other = load_backbone(f"hf:{write_tiny_siglip(tmp_path / 'tiny-siglip', 'siglip', seed=1)}")
    assert other.identity["weights"] != towers["siglip"].identity["weights"]
    copy = shutil.copytree(folders["siglip"], tmp_path / "copy" / "tiny-siglip")
    assert load_backbone(f"hf:{copy}").identity["weights"] == towers["siglip"].identity["weights"]


@pytest.mark.parametrize("kind", TOWERS)
def test_preprocessing_comes_from_the_image_processor(tmp_path, folders, kind):
    folder = shutil.copytree(folders[kind], tmp_path / kind)
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    settings.update(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6], resample=0)
    settings.update({"size": {"height": 48, "width": 48}} if kind == "siglip" else {"max_num_patches": 36})
    (folder / "preprocessor_config.json").write_text(json.dumps(settings))
    backbone = load_backbone(f"hf:{folder}")
    assert backbone.mean == pytest.approx((0.1, 0.2, 0.3)) and backbone.std == pytest.approx((0.4, 0.5, 0.6))
    mode = "squash" if kind == "siglip" else "naflex"
    assert (backbone.interpolation, backbone.library_resize_mode) == ("nearest", mode)
    assert backbone.identity["interpolation"] == "nearest"
    assert backbone.image_size == 48 and backbone.grid == (6, 6)  # SigLIP 2: 36 patches of 8 px, square


def test_siglip2_pixels_are_the_library_processors(towers):
    """A square image through the library's own Siglip2ImageProcessor (rescale, normalise, patches)
    gives the feature that clipml's normalised pixels give."""
    backbone = towers["siglip2"]
    array = torch.randint(0, 256, (32, 32, 3), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    inputs = tiny_image_processor("siglip2")(images=Image.fromarray(array.numpy()), return_tensors="pt")
    mean, std = torch.tensor(backbone.mean)[:, None, None], torch.tensor(backbone.std)[:, None, None]
    pixels = ((array.permute(2, 0, 1).float() / 255 - mean) / std)[None]
    with torch.no_grad():
        expected = backbone.model.get_image_features(**inputs).pooler_output
        torch.testing.assert_close(backbone.encode_image(pixels), expected, rtol=1e-4, atol=1e-5)


# Image: the library's features at any size, the MAP head's dense path -------------------------------
@pytest.mark.parametrize("kind", TOWERS)
@pytest.mark.parametrize("size", [None, 48])
def test_encode_image_is_the_librarys_at_any_size(folders, kind, size):
    backbone = load_backbone(BackboneConfig(f"hf:{folders[kind]}", image_size=size))
    reference = load_backbone(f"hf:{folders[kind]}").model  # untouched: resizes at call time
    images = images_for(backbone)
    extra = {"interpolate_pos_encoding": True} if kind == "siglip" else {}
    with torch.no_grad():
        expected = reference.get_image_features(**library_inputs(backbone, images), **extra).pooler_output
        torch.testing.assert_close(backbone.encode_image(images), expected, rtol=1e-5, atol=1e-5)
        dense = backbone.encode_dense(images)
    torch.testing.assert_close(dense.pooled, expected, rtol=1e-5, atol=1e-5)
    side = backbone.image_size // TINY_PATCH
    assert dense.grid == (side, side) and dense.tokens.shape == (2, side * side, backbone.embed_dim)
    assert backbone.embed_dim == backbone.model.config.vision_config.hidden_size  # no projection after the head


@pytest.mark.parametrize("kind", TOWERS)
def test_map_head_output_before_its_mlp_is_the_attention_mixture_of_value_out_vectors(towers, kind):
    """METHODS §1's identity for a MAP head: the probe's attention output is, per head h, the
    attention-weighted sum of the patches' value vectors through that head's slice of the output
    projection, plus the output bias; summed over heads, a patch's slices are its value-out vector."""
    backbone = towers[kind]
    head = backbone.model.vision_model.head
    attention = head.attention
    with torch.no_grad():
        states = backbone.vision_states(images_for(backbone))
        probe = head.probe.expand(states.shape[0], -1, -1)
        output, weights = attention(probe, states, states, need_weights=True, average_attn_weights=False)
        width, heads = states.shape[-1], attention.num_heads
        values = states @ attention.in_proj_weight[2 * width:].T + attention.in_proj_bias[2 * width:]
        per_head = values.reshape(*values.shape[:2], heads, width // heads)  # [B, N, H, d]
        slices = attention.out_proj.weight.T.reshape(heads, width // heads, width)
        contributions = torch.einsum("bnhd,hdw->bhnw", per_head, slices)  # [B, H, N, W]
        mixture = torch.einsum("bhn,bhnw->bw", weights[:, :, 0], contributions) + attention.out_proj.bias
        torch.testing.assert_close(mixture, output[:, 0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(contributions.sum(dim=1) + attention.out_proj.bias, attention.out_proj(values))


@pytest.mark.parametrize("kind", TOWERS)
def test_a_dense_token_is_the_head_attending_to_that_patch_alone(towers, kind):
    """The head's LN+MLP residual is applied to each patch's value-out vector: token j is exactly
    the library's head on a sequence of patch j only (its probe's attention all on j)."""
    backbone = towers[kind]
    head = backbone.model.vision_model.head
    images = images_for(backbone)
    with torch.no_grad():
        states = backbone.vision_states(images)
        tokens = backbone.encode_dense(images).tokens
        for j in (0, 5, states.shape[1] - 1):
            torch.testing.assert_close(tokens[:, j], head(states[:, j:j + 1]), rtol=1e-5, atol=1e-5)


# Text: fixed-length padding, last-token pooling, learnable contexts ---------------------------------
@pytest.mark.parametrize("kind", TOWERS)
def test_hand_written_prompts_are_the_librarys_text_features(towers, kind):
    backbone = towers[kind]
    ids = library_text_ids(backbone, PROMPTS)
    with torch.no_grad():
        expected = backbone.model.get_text_features(input_ids=ids).pooler_output
        torch.testing.assert_close(backbone.encode_text(PROMPTS), expected, rtol=1e-5, atol=1e-5)
        dense = backbone.encode_text_dense(PROMPTS)
    torch.testing.assert_close(dense.pooled, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense.tokens[:, -1], dense.pooled)
    assert not backbone.truncatable and backbone.text_ids(PROMPTS).shape == (3, 64)
    assert backbone.pooled_positions(ids).tolist() == [63] * 3
    words = [len(backbone._tokenizer(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS]
    # SigLIP: the words and its end token (also its padding); SigLIP 2: its begin token and the words.
    torch.testing.assert_close(dense.mask.sum(dim=-1), torch.tensor(words) + 1)
    assert backbone.leading_tokens == (1 if kind == "siglip2" else 0)


@pytest.mark.parametrize("kind", TOWERS)
def test_context_prompts_with_init_words_equal_the_library_on_those_words(towers, kind):
    backbone = towers[kind]
    ids, slots = backbone.context_prompt_ids(CLASSES, 4)
    pieces = backbone._tokenizer.convert_ids_to_tokens(ids[0, slots].tolist())
    # SigLIP 2's tokenizer marks no first word: one token per slot, not one id.
    assert pieces == (["x", "\u2581x", "\u2581x", "\u2581x"] if kind == "siglip2" else ["\u2581x"] * 4)
    n_ctx = len(backbone.word_ids("a photo of a"))  # 9 here: the tiny tokenizers are character-level
    prompts = ContextPrompts(backbone, CLASSES, n_ctx=n_ctx, class_specific=True, init="a photo of a")
    with torch.no_grad():
        expected = backbone.model.get_text_features(input_ids=library_text_ids(backbone, PROMPTS)).pooler_output
        torch.testing.assert_close(prompts(), expected, rtol=1e-5, atol=1e-5)


# Scoring: the tower's scale and bias, sigmoid zero-shot -------------------------------------------
@pytest.mark.parametrize("kind", TOWERS)
def test_zero_shot_logits_are_the_librarys_and_probabilities_sigmoids(towers, kind):
    backbone = towers[kind]
    assert backbone.logit_scale == pytest.approx(float(backbone.model.logit_scale.exp()))
    assert backbone.logit_bias == pytest.approx(float(backbone.model.logit_bias)) and backbone.logit_bias != 0
    images = images_for(backbone)
    zero_shot = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="zero_shot", temperature=None))
    with torch.no_grad():
        logits = zero_shot(images).logits
        expected = backbone.model(input_ids=library_text_ids(backbone, PROMPTS),
                                  **library_inputs(backbone, images)).logits_per_image
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(backbone.zero_shot_probabilities(logits), torch.sigmoid(expected))
    learned = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="csc_global", n_ctx=2, temperature=None))
    scale, bias = logit_scale_and_bias(learned, "learned")
    assert (scale, bias) == (pytest.approx(backbone.logit_scale), pytest.approx(backbone.logit_bias))
    assert float(learned.head.log_temperature.exp()) == pytest.approx(backbone.logit_scale)
    assert float(learned.head.bias.detach()) == pytest.approx(backbone.logit_bias) and learned.head.bias.requires_grad


# Refusals: one clear error each -------------------------------------------------------------------
@pytest.mark.parametrize("missing, words", [("tokenizer.json", "tokenizer cannot be read.*huggingface-cli download"),
                                            ("preprocessor_config.json", "image processor.*cannot be read")])
def test_a_folder_without_its_tokenizer_or_processor_says_what_to_download(tmp_path, folders, missing, words):
    folder = shutil.copytree(folders["siglip"], tmp_path / "incomplete")
    (folder / missing).unlink()
    with pytest.raises(BackboneError, match=words):
        load_backbone(f"hf:{folder}")


@pytest.mark.skipif(importlib.util.find_spec("sentencepiece") is not None, reason="sentencepiece is installed")
def test_a_sentencepiece_tokenizer_without_the_library_says_to_install_it(tmp_path, folders):
    folder = shutil.copytree(folders["siglip"], tmp_path / "spm")
    (folder / "tokenizer.json").unlink()  # as google/siglip-*: spiece.model and SiglipTokenizer only
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "tokenizer_class": "SiglipTokenizer"}))
    (folder / "spiece.model").write_bytes(b"a SentencePiece model")
    with pytest.raises(BackboneError, match=r"tokenizer cannot be read .*\(pip install sentencepiece\)"):
        load_backbone(f"hf:{folder}")


def test_a_hub_model_is_identified_by_its_id_and_snapshot_commit(tmp_path, monkeypatch, folders):
    """A hub id read offline from the hub's cache layout (snapshots/<commit>/, refs/main)."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-siglip"
    shutil.copytree(folders["siglip"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = load_backbone("hf:someone/tiny-siglip")
    assert isinstance(backbone, HFSiglipBackbone)
    assert backbone.identity["weights"] == f"hf-hub:someone/tiny-siglip@{commit}"


def test_hub_model_unavailable_offline_names_the_folder_form(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match=r"google/siglip2-base-patch16-224.*hf:/path/to/folder"):
        load_backbone("hf:google/siglip2-base-patch16-224")


def test_settings_for_other_towers_are_refused(folders):
    with pytest.raises(BackboneError, match="dense=tokens"):
        load_backbone(BackboneConfig(f"hf:{folders['siglip']}", dense="clearclip"))
    with pytest.raises(BackboneError, match="pos_embed_resize does not apply"):
        load_backbone(BackboneConfig(f"hf:{folders['siglip2']}", pos_embed_resize="bicubic_antialias"))
    with pytest.raises(BackboneError, match="multiple of 8"):
        load_backbone(BackboneConfig(f"hf:{folders['siglip']}", image_size=36))
    resized = load_backbone(BackboneConfig(f"hf:{folders['siglip']}", image_size=48, pos_embed_resize="bicubic_antialias"))
    assert resized.identity["pos_embed_resize"] == "bicubic_antialias"


# Every method on every tower: two training steps, checkpoint, reload, predict ----------------------
@pytest.mark.integration
@pytest.mark.parametrize("kind", TOWERS)
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_checkpoints_reloads_and_predicts(tmp_path_factory, folders, kind, method):
    tmp = tmp_path_factory.mktemp(f"{kind}-{method}")
    captions = ["data.captions.source=synthetic", "data.captions.options={num_captions: 32}",
                "loss.name=ranking"] if method == "taidpt" else []
    cfg = load_config(ExperimentConfig, None, [
        *(o for o in TINY_RUN if not o.startswith(("backbone.", "model.sdm_csp.")) or method == "sdm_csp"
          and o.startswith("model.sdm_csp.")),
        f"backbone.spec=hf:{folders[kind]}", f"model.method={method}", "data.options={num_images: 120}",
        "data.val_fraction=0.25", "data.batch_size=48", "optim.epochs=1", "data.cache=false", "train.report_images=0",
        "train.tensorboard=false", f"data.mask_dir={tmp / 'masks'}", f"output_dir={tmp / '{name}'}", *captions])
    summary = train(cfg, resume=False)  # 90 training images in batches of 48: two steps
    if method == "zero_shot":  # nothing to train, so no checkpoint: the tower's own zero-shot predictor
        assert summary["trainable_parameters"] == 0
        predictor = Predictor.zero_shot(CLASSES, backbone=f"hf:{folders[kind]}")
    else:
        assert len(summary["history"]) == 1 and summary["trainable_parameters"] > 0
        predictor = Predictor.from_checkpoint(str(tmp / cfg.name / "prompts.safetensors"))
    assert isinstance(predictor.models[0].backbone, HFSiglipBackbone)
    write_synthetic_dataset(tmp / "world", {"test": 3}, seed=3, image_size=32)
    result = predictor.predict(sorted((tmp / "world" / "images").rglob("*.jpg")))
    assert result.probabilities.shape[0] == 3 and torch.isfinite(torch.as_tensor(result.probabilities)).all()
