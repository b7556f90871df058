"""EVA-02 and MobileCLIP 2 towers from open_clip (timm image towers) on tiny random configs: frozen,
pooled feature = the library's encode_image in every dense mode and at other sizes, each dense
mode against a hand computation from the last block's weights (EVA's rope included), FastViT's
per-location head averaging to the pooled feature, text against the library's encode_text
(causal and mask-free towers), the tags' preprocessing, and every method trained on every tower."""

import copy
import math

import open_clip
import pytest
import torch
from timm.layers import apply_rot_embed_cat

from clipml import Predictor
from clipml.backbones import DENSE_MODES, BackboneConfig, load_backbone
from clipml.backbones.open_clip import OpenCLIPBackbone, _preprocess_of_tags, create_open_clip
from clipml.config import load_config
from clipml.engine.train import train
from clipml.errors import BackboneError
from clipml.experiment import ExperimentConfig
from clipml.methods import METHODS
from clipml.prompts import ContextPrompts
from conftest import TINY_RUN

# The tiny towers of this file (spec -> native size). Kept as one list so they merge easily with
# the other timm families' tiny towers.
EVA_MOBILECLIP_TOWERS = {
    "open_clip:clipml-tiny-eva02": 32,  # timm Eva: rope, SwiGLU, sub-LN; causal text
    "open_clip:clipml-tiny-mobileclip2-b": 32,  # timm hybrid ViT (conv stem, stride 16); causal text
    "open_clip:clipml-tiny-mobileclip2-l": 32,  # timm CLIP ViT; text without a causal mask
    "open_clip:clipml-tiny-mobileclip2-s": 64,  # timm FastViT, 4 stages, stride 32; no causal mask
    "open_clip:clipml-tiny-mobileclip2-s3": 128,  # timm FastViT, 5 stages, stride 64; no causal mask
}
VITS = [spec for spec in EVA_MOBILECLIP_TOWERS if "-s" not in spec.rsplit("mobileclip2", 1)[-1]]
FASTVITS = [spec for spec in EVA_MOBILECLIP_TOWERS if spec not in VITS]
CAUSAL = {"open_clip:clipml-tiny-eva02", "open_clip:clipml-tiny-mobileclip2-b"}
CLASSES = ["dog", "dining table", "traffic light"]


def tower(spec, image_size=None, dense="tokens", **options):
    torch.manual_seed(0)
    return load_backbone(BackboneConfig(spec, image_size=image_size, dense=dense, allow_random=True, **options))


def assert_close(ours, expected, tolerance=1e-5):
    """Equal to `tolerance` of the expected values' largest magnitude: random timm heads start at
    1e-3 of their init scale, so absolute tolerances would pass anything."""
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(ours / scale, expected / scale, rtol=0, atol=tolerance)


def images_for(backbone, n=2):
    size = backbone.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("spec", EVA_MOBILECLIP_TOWERS)
def test_towers_are_frozen_and_stay_in_eval_mode(spec):
    backbone = tower(spec)
    assert sum(p.numel() for p in backbone.parameters() if p.requires_grad) == 0
    backbone.train()
    assert not any(module.training for module in backbone.modules())


@pytest.mark.parametrize("mode", DENSE_MODES)
@pytest.mark.parametrize("spec", VITS)
def test_vit_pooled_feature_is_encode_image_in_every_mode_and_size(spec, mode):
    native = EVA_MOBILECLIP_TOWERS[spec]
    for size in (None, 3 * native // 2 if "mobileclip2-b" not in spec else 2 * native):
        backbone = tower(spec, size, mode)
        images = images_for(backbone)
        with torch.no_grad():
            dense = backbone.encode_dense(images)
            expected = backbone.model.encode_image(images)
        side = backbone.image_size // backbone.image_tower.stride
        assert dense.grid == (side, side) and dense.tokens.shape == (2, side * side, backbone.embed_dim)
        assert_close(dense.pooled, expected)


@pytest.mark.parametrize("spec", VITS)
def test_tokens_mode_reads_the_library_patch_tokens(spec):
    """Mode "tokens": the trunk's own normalised last-block patch tokens through its classifier head."""
    backbone = tower(spec, 48 if "mobileclip2-b" not in spec else 64)
    images = images_for(backbone)
    trunk = backbone.model.visual.trunk
    with torch.no_grad():
        _, intermediates = trunk.forward_intermediates(images, indices=1, norm=True, output_fmt="NLC")
        expected = trunk.head(intermediates[-1])
        ours = backbone.encode_dense(images).tokens
    assert_close(ours, expected)


# The oracle of the other modes: vit_dense's equations written out per head in float64 from the
# last block's modules, the library's own forward up to that block, and timm's rope function.
def last_block_input(trunk, images):
    """(the last block's input [B, L, W], the rope it was given or None), captured from the library."""
    captured = {}

    def grab(module, args, kwargs):
        captured["x"], captured["rope"] = args[0], kwargs.get("rope")

    handle = trunk.blocks[-1].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        trunk.forward_features(images)
    finally:
        handle.remove()
    return captured["x"], captured["rope"]


def oracle_patches(backbone, images, mode, use_rope=True):
    trunk = copy.deepcopy(backbone.model.visual.trunk).double()
    x, rope = last_block_input(trunk, images.double())
    block = trunk.blocks[-1]
    attention = block.attn
    h = block.norm1(x)
    if getattr(attention, "qkv", None) is not None:
        q, k, v = attention.qkv(h).chunk(3, dim=-1)
    else:
        q, k, v = attention.q_proj(h), attention.k_proj(h), attention.v_proj(h)
    heads = attention.num_heads
    batch, length, width = q.shape
    q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    if rope is not None and use_rope:
        q, k = (torch.cat([t[:, :, :1], apply_rot_embed_cat(t[:, :, 1:], rope.double())], dim=2) for t in (q, k))

    def attend(a, b):
        return torch.softmax(a @ b.transpose(-1, -2) / math.sqrt(width // heads), dim=-1) @ v

    mixed = {"value": v, "sclip": attend(q, q) + attend(k, k), "clearclip": attend(q, q)}[mode]
    out = attention.proj(attention.norm(mixed.transpose(1, 2).reshape(batch, length, width)))
    gamma_1 = getattr(block, "gamma_1", None)
    scaled = block.ls1(out) if hasattr(block, "ls1") else (out if gamma_1 is None else gamma_1 * out)
    if mode == "clearclip":
        y = scaled
    else:
        y = x + scaled
        mlp = block.mlp(block.norm2(y))
        gamma_2 = getattr(block, "gamma_2", None)
        y = y + (block.ls2(mlp) if hasattr(block, "ls2") else (mlp if gamma_2 is None else gamma_2 * mlp))
    return trunk.head(trunk.fc_norm(trunk.norm(y[:, 1:]))).float()


def sharpen(backbone, factor=30.0):
    """Scale the last block's query and key weights: random towers attend almost uniformly, which
    would hide a wrong attention (or a missing rope) in the comparisons."""
    attention = backbone.model.visual.trunk.blocks[-1].attn
    with torch.no_grad():
        if getattr(attention, "qkv", None) is not None:
            attention.qkv.weight[: 2 * attention.qkv.weight.shape[0] // 3] *= factor
        else:
            attention.q_proj.weight *= factor
            attention.k_proj.weight *= factor
    return backbone


@pytest.mark.parametrize("mode", ["value", "sclip", "clearclip"])
@pytest.mark.parametrize("spec", VITS)
def test_dense_modes_match_the_hand_computation(spec, mode):
    backbone = sharpen(tower(spec, 48 if "mobileclip2-b" not in spec else 64, mode))  # resized positions, rope
    images = images_for(backbone)
    with torch.no_grad():
        ours = backbone.encode_dense(images).tokens
        expected = oracle_patches(backbone, images, mode)
    assert_close(ours, expected)
    if "eva02" in spec and mode != "value":  # the oracle sees the rope: without it q and k differ
        with torch.no_grad():
            assert (ours - oracle_patches(backbone, images, mode, use_rope=False)).abs().max() > 1e-2 * ours.abs().max()


def test_eva_rope_follows_the_grid_as_timm_builds_it_natively():
    """At 48 px the rope is the one timm builds for a 6 x 6 grid with the same reference grid."""
    backbone = tower("open_clip:clipml-tiny-eva02", 48)
    native = open_clip.create_model("clipml-tiny-eva02", force_image_size=48).visual.trunk
    assert tuple(native.patch_embed.grid_size) == (6, 6)
    torch.testing.assert_close(backbone.model.visual.trunk.rope.get_embed(), native.rope.get_embed())


def test_position_resize_kernel_enters_the_identity_of_resized_vits_only():
    options = dict(pos_embed_resize="bicubic_antialias")
    assert tower("open_clip:clipml-tiny-eva02", 48, **options).identity["pos_embed_resize"] == "bicubic_antialias"
    assert "pos_embed_resize" not in tower("open_clip:clipml-tiny-eva02", **options).identity
    assert "pos_embed_resize" not in tower("open_clip:clipml-tiny-mobileclip2-s", 128, **options).identity


@pytest.mark.parametrize("spec", FASTVITS)
def test_fastvit_head_at_every_location_averages_to_encode_image(spec):
    native = EVA_MOBILECLIP_TOWERS[spec]
    backbone = tower(spec, native * 3 // 2 if native == 64 else native * 2)  # a non-native size
    images = images_for(backbone)
    trunk = backbone.model.visual.trunk
    with torch.no_grad():
        dense = backbone.encode_dense(images)
        expected_pooled = backbone.model.encode_image(images)
        feature_map = trunk.forward_features(images)  # [B, C, h, w]
        fc = trunk.get_classifier()
        expected_tokens = torch.einsum("bchw,dc->bhwd", feature_map, fc.weight).flatten(1, 2) + fc.bias
    side = backbone.image_size // backbone.image_tower.stride
    assert dense.grid == (side, side) and side > 1
    assert_close(dense.pooled, expected_pooled)
    assert_close(dense.tokens, expected_tokens)
    assert_close(dense.tokens.mean(dim=1), dense.pooled)


def test_bad_sizes_and_options_are_refused():
    with pytest.raises(BackboneError, match="multiple of 32"):
        tower("open_clip:clipml-tiny-mobileclip2-s", 80)
    with pytest.raises(BackboneError, match="multiple of 64"):
        tower("open_clip:clipml-tiny-mobileclip2-s3", 96)
    with pytest.raises(BackboneError, match="multiple of 8"):
        tower("open_clip:clipml-tiny-eva02", 36)
    with pytest.raises(BackboneError, match="FastViT.*dense mode 'sclip'"):
        tower("open_clip:clipml-tiny-mobileclip2-s", dense="sclip")
    with pytest.raises(BackboneError, match="attnpool_positional"):
        tower("open_clip:clipml-tiny-eva02", attnpool_positional=False)


@pytest.mark.parametrize("spec", EVA_MOBILECLIP_TOWERS)
def test_text_reproduces_encode_text_and_the_mask_decides_truncation(spec):
    backbone = tower(spec)
    texts = ["a photo of a dog.", "a dining table next to a traffic light"]
    with torch.no_grad():
        ours = backbone.encode_text(texts)
        expected = backbone.model.encode_text(open_clip.tokenize(texts))
        contexts = ContextPrompts(backbone, CLASSES, n_ctx=4, class_specific=True, init="a photo of a")()
        handwritten = backbone.model.encode_text(open_clip.tokenize([f"a photo of a {c}." for c in CLASSES]))
    assert_close(ours, expected)
    assert_close(contexts, handwritten)
    assert backbone.truncatable == (spec in CAUSAL)
    assert backbone.text_ids(texts).shape[1] == (10 if spec in CAUSAL else 77)  # start, 8 words, end


@pytest.mark.parametrize("spec", EVA_MOBILECLIP_TOWERS)
def test_scoring_is_the_towers_own_softmax(spec):
    backbone = tower(spec)
    assert backbone.logit_scale == pytest.approx(float(backbone.model.logit_scale.exp()))
    assert backbone.logit_bias is None and backbone.zero_shot_rule == "softmax"


def test_weights_without_a_tag_take_the_tags_preprocessing():
    """open_clip applies a tag's mean, std and interpolation only when the tag is named; a file of
    MobileCLIP2-S0 weights still gets the mean 0, std 1 and bilinear resize its tags agree on."""
    model, _ = create_open_clip("clipml-tiny-mobileclip2-s", None, allow_random=True)
    assert model.visual.preprocess_cfg["mean"] == open_clip.OPENAI_DATASET_MEAN
    _preprocess_of_tags(model, "MobileCLIP2-S0")
    from_file = OpenCLIPBackbone(model, "MobileCLIP2-S0", "file:s0.safetensors:0123", BackboneConfig())
    assert (from_file.mean, from_file.std, from_file.interpolation) == ((0.0,) * 3, (1.0,) * 3, "bilinear")
    eva, _ = create_open_clip("clipml-tiny-eva02", None, allow_random=True)
    _preprocess_of_tags(eva, "EVA02-B-16")
    eva_tag = open_clip.get_pretrained_cfg("EVA02-B-16", "merged2b_s8b_b131k")
    assert tuple(eva.visual.preprocess_cfg["mean"]) == tuple(eva_tag["mean"])


@pytest.mark.integration
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("spec", [s for s in EVA_MOBILECLIP_TOWERS if not s.endswith("-s3")])
def test_every_method_trains_checkpoints_and_predicts_on_every_tower(tmp_path, spec, method):
    """Two optimizer steps (48 training images, batches of 24; TaI-DPT: its captions' batches),
    then the checkpoint predicts; zero-shot, which trains nothing and saves no prompts, predicts
    through Predictor.zero_shot by the tower's softmax."""
    size = EVA_MOBILECLIP_TOWERS[spec]
    overrides = [o for o in TINY_RUN if not o.startswith(("backbone.spec", "backbone.image_size"))
                 and not (method != "sdm_csp" and o.startswith("model.sdm_csp."))]
    captions = ["data.captions.source=synthetic", "data.captions.options={num_captions: 30}"]
    cfg = load_config(ExperimentConfig, None, [
        *overrides, f"backbone.spec={spec}", f"backbone.image_size={size}", f"model.method={method}",
        "data.options={num_images: 64}", "data.val_fraction=0.25", "data.batch_size=24", "optim.epochs=1",
        "train.report_images=0", "train.tensorboard=false", f"data.mask_dir={tmp_path / 'masks'}",
        f"output_dir={tmp_path / 'runs' / '{name}'}", "name=tiny", *(captions if method == "taidpt" else []),
    ])
    steps = []

    def count_steps(iterable, desc, **_):
        for item in iterable:
            steps.append(desc)
            yield item

    summary = train(cfg, resume=False, progress=count_steps)
    trained = steps.count("epoch 1/1")
    if method == "zero_shot":
        assert trained == 0
    elif method == "taidpt":  # trains on captions (and one prompt per template and class)
        assert trained == math.ceil(summary["captions"]["training_captions"] / 24) >= 2
    else:
        assert trained == 2
    images = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8)
    if method == "zero_shot":
        backbone = load_backbone(BackboneConfig(spec, image_size=size, allow_random=True))
        result = Predictor.zero_shot(CLASSES, backbone=backbone).predict(images)
        torch.testing.assert_close(torch.as_tensor(result.probabilities).sum(dim=1).double(),
                                   torch.ones(3, dtype=torch.float64))
        return
    predictor = Predictor.from_checkpoint(str(tmp_path / "runs" / "tiny" / "prompts.safetensors"))
    assert predictor.model.backbone.identity["model"] == spec.split(":", 1)[1]
    result = predictor.predict(images)
    assert result.probabilities.shape == (3, len(predictor.classnames))
    assert torch.isfinite(torch.as_tensor(result.probabilities)).all()
