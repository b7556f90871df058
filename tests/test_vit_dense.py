"""ViT dense modes (clipml.backbones.vit_dense) against hand computations from each library's own
module weights, open_clip against transformers on the same weights, and the global feature
unchanged by every mode."""

import copy
import logging
import math
import typing

import pytest
import torch
from torch import nn

from clipml.backbones import DENSE_MODES, BackboneConfig, load_backbone, register_test_models
from clipml.backbones.hf import HFCLIPBackbone
from clipml.backbones.open_clip import OpenCLIPBackbone
from clipml.config import load_config
from clipml.engine.builders import build_backbone
from clipml.engine.checkpoint import check_backbone
from clipml.errors import BackboneError, ConfigError
from clipml.experiment import ExperimentConfig
from clipml.model import ModelConfig, MultiLabelCLIP

SPECS = {
    "open_clip_vit": "open_clip:clipml-tiny-vit",  # random weights; global feature = class token
    "open_clip_avg": "toy-vit",  # the lab's trained toy; global feature = mean of the patch tokens
    "hf_vit": "hf:clipml-tiny-hf",
}
# Larger than native, with interpolated positions: 12 x 12 patches instead of 4 x 4 (tiny, 8 px
# patches, 32 px) or 8 x 8 (toy, 12 px patches, 96 px).
LARGER = {"open_clip_vit": 96, "open_clip_avg": 144, "hf_vit": 96}


@pytest.fixture(scope="module")
def backbones():
    """Backbones by (family, image size or None, mode), built once each."""
    cache = {}

    def get(family, size, mode):
        if (family, size, mode) not in cache:
            cache[family, size, mode] = load_backbone(BackboneConfig(SPECS[family], image_size=size, allow_random=True, dense=mode))
        return cache[family, size, mode]

    return get


def images_for(backbone, n=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=generator)


# The oracle: the equations of vit_dense's docstring written out per head, in float64, from
# the weights of the last block, and the library's own forward up to that block.
def last_block_weights(backbone):
    """Tensors and activation of the last block, `ln_post` and the projection; and the block."""
    if backbone.identity["library"] == "open_clip":
        visual = backbone.model.visual
        block = visual.transformer.resblocks[-1]
        width = block.attn.embed_dim
        qkv_w, qkv_b = block.attn.in_proj_weight, block.attn.in_proj_bias
        quick = type(block.mlp.gelu).__name__ == "QuickGELU"
        tensors = dict(
            wq=qkv_w[:width], bq=qkv_b[:width], wk=qkv_w[width:2 * width], bk=qkv_b[width:2 * width],
            wv=qkv_w[2 * width:], bv=qkv_b[2 * width:], wo=block.attn.out_proj.weight, bo=block.attn.out_proj.bias,
            w1=block.mlp.c_fc.weight, b1=block.mlp.c_fc.bias, w2=block.mlp.c_proj.weight, b2=block.mlp.c_proj.bias,
            proj=visual.proj,
        )
        for name, scale in (("g1", block.ls_1), ("g2", block.ls_2)):  # layer scales, if the model has them
            tensors[name] = scale.gamma if hasattr(scale, "gamma") else torch.ones(width)
        norms = dict(ln1=block.ln_1, ln2=block.ln_2, post=visual.ln_post)
        heads = block.attn.num_heads
    else:
        vision = backbone.model.vision_model
        block = vision.encoder.layers[-1]
        attention = block.self_attn
        quick = backbone.model.config.vision_config.hidden_act == "quick_gelu"
        tensors = dict(
            wq=attention.q_proj.weight, bq=attention.q_proj.bias, wk=attention.k_proj.weight,
            bk=attention.k_proj.bias, wv=attention.v_proj.weight, bv=attention.v_proj.bias,
            wo=attention.out_proj.weight, bo=attention.out_proj.bias, w1=block.mlp.fc1.weight,
            b1=block.mlp.fc1.bias, w2=block.mlp.fc2.weight, b2=block.mlp.fc2.bias,
            proj=backbone.model.visual_projection.weight.T, g1=torch.ones(attention.embed_dim),
            g2=torch.ones(attention.embed_dim),
        )
        norms = dict(ln1=block.layer_norm1, ln2=block.layer_norm2, post=vision.post_layernorm)
        heads = attention.num_heads
    weights = {name: t.detach().double() for name, t in tensors.items()}
    for name, norm in norms.items():
        weights[name] = (norm.weight.detach().double(), norm.bias.detach().double(), norm.eps)
    return weights, heads, quick, block


def layer_norm(t, params):
    weight, bias, eps = params
    centred = t - t.mean(dim=-1, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(dim=-1, keepdim=True) + eps) * weight + bias


def hand_dense(weights, heads, quick, x, mode):
    """Dense map [B, N, D] of `mode` from the last block's input x [B, L, W]."""
    w = weights
    x = x.double()
    h = layer_norm(x, w["ln1"])
    q, k, v = (h @ w["w" + n].T + w["b" + n] for n in "qkv")
    d = x.shape[-1] // heads

    def softmax_attention(a, b):
        return torch.softmax(a @ b.transpose(-1, -2) / math.sqrt(d), dim=-1)

    mixed = []
    for head in range(heads):
        part = slice(head * d, (head + 1) * d)
        qh, kh, vh = q[..., part], k[..., part], v[..., part]
        mixed.append({
            "tokens": lambda: softmax_attention(qh, kh) @ vh,
            "value": lambda: vh,
            "sclip": lambda: (softmax_attention(qh, qh) + softmax_attention(kh, kh)) @ vh,
            "clearclip": lambda: softmax_attention(qh, qh) @ vh,
        }[mode]())
    out = (torch.cat(mixed, dim=-1) @ w["wo"].T + w["bo"]) * w["g1"]
    if mode != "clearclip":  # ClearCLIP drops the residual and the MLP
        y = x + out
        z = layer_norm(y, w["ln2"]) @ w["w1"].T + w["b1"]
        z = z * torch.sigmoid(1.702 * z) if quick else 0.5 * z * (1 + torch.erf(z / math.sqrt(2)))
        out = y + (z @ w["w2"].T + w["b2"]) * w["g2"]
    return layer_norm(out[:, 1:], w["post"]) @ w["proj"]


def library_forward(backbone, images):
    """(the library's own encode_image, the input of its last block), from one library forward."""
    _, _, _, block = last_block_weights(backbone)
    captured = {}

    def keep_input(module, args):
        captured["x"] = args[0]  # returns None: the block runs unchanged

    handle = block.register_forward_pre_hook(keep_input)
    try:
        with torch.no_grad():
            if backbone.identity["library"] == "open_clip":
                pooled = backbone.model.encode_image(images)
            else:
                pooled = backbone.model.get_image_features(pixel_values=images).pooler_output
    finally:
        handle.remove()
    return pooled, captured["x"]


@pytest.mark.parametrize("larger", [False, True])
@pytest.mark.parametrize("family", list(SPECS))
def test_every_mode_equals_the_hand_computation_and_keeps_the_global_feature(backbones, family, larger):
    size = LARGER[family] if larger else None
    maps = {}
    for mode in DENSE_MODES:
        backbone = backbones(family, size, mode)
        images = images_for(backbone)
        pooled, x = library_forward(backbone, images)
        weights, heads, quick, _ = last_block_weights(backbone)
        with torch.no_grad():
            dense = backbone.encode_dense(images)
        expected = hand_dense(weights, heads, quick, x, mode).float()
        torch.testing.assert_close(dense.tokens, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(dense.pooled, pooled, rtol=1e-5, atol=1e-5)  # the library's own
        assert dense.grid == backbone.grid and backbone.identity.get("dense", "tokens") == mode
        maps[mode] = dense.tokens
    # The modes are different maps (so each comparison above could fail).
    for i, first in enumerate(DENSE_MODES):
        for second in DENSE_MODES[i + 1:]:
            assert (maps[first] - maps[second]).abs().max() > 1e-2, (first, second)


def tiny_open_clip(**vision):
    import open_clip

    with torch.random.fork_rng():
        torch.manual_seed(13)
        return open_clip.CLIP(
            embed_dim=32,
            vision_cfg=dict(image_size=32, layers=2, width=64, head_width=16, patch_size=8, **vision),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
        )


def test_layer_scales_of_the_last_block_are_applied():
    """open_clip ViTs with layer scale (ls_1, ls_2): the modes scale the block's branches as the block does."""
    model = tiny_open_clip(ls_init_value=0.5)
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            block.ls_1.gamma.uniform_(0.2, 1.5)
            block.ls_2.gamma.uniform_(0.2, 1.5)
    for mode in DENSE_MODES:
        backbone = OpenCLIPBackbone(copy.deepcopy(model), "tiny-layer-scale", "random", BackboneConfig(image_size=96, dense=mode))
        images = images_for(backbone, seed=9)
        pooled, x = library_forward(backbone, images)
        weights, heads, quick, _ = last_block_weights(backbone)
        with torch.no_grad():
            dense = backbone.encode_dense(images)
        torch.testing.assert_close(dense.tokens, hand_dense(weights, heads, quick, x, mode).float(),
                                   rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(dense.pooled, pooled, rtol=1e-5, atol=1e-5)


def test_a_vit_with_open_clips_custom_block_keeps_tokens_and_refuses_the_other_modes():
    model = tiny_open_clip(scale_attn=True)  # CustomResidualAttentionBlock
    assert "dense" not in OpenCLIPBackbone(copy.deepcopy(model), "tiny-custom", "random").identity
    with pytest.raises(BackboneError, match="'sclip' needs open_clip's standard ResidualAttentionBlock, "
                                            "this tower has CustomResidualAttentionBlock"):
        OpenCLIPBackbone(model, "tiny-custom", "random", BackboneConfig(dense="sclip"))


@pytest.mark.parametrize("family", ["open_clip_vit", "open_clip_avg", "hf_vit"])
def test_value_mode_is_the_library_block_attending_to_itself_only(backbones, family):
    """MaskCLIP's value path = the library's own last block under a mask that lets each token
    attend to itself only (softmax of one entry is 1), then ln_post and the projection."""
    backbone = backbones(family, LARGER[family], "value")
    images = images_for(backbone, seed=3)
    _, x = library_forward(backbone, images)
    length = x.shape[1]
    self_only = torch.full((length, length), float("-inf")).fill_diagonal_(0)
    with torch.no_grad():
        if backbone.identity["library"] == "open_clip":
            visual = backbone.model.visual
            out = visual.transformer.resblocks[-1](x, attn_mask=self_only)
            expected = visual.ln_post(out[:, 1:]) @ visual.proj
        else:
            vision = backbone.model.vision_model
            out = vision.encoder.layers[-1](x, self_only.expand(x.shape[0], 1, length, length))
            expected = backbone.model.visual_projection(vision.post_layernorm(out[:, 1:]))
        dense = backbone.encode_dense(images)
    torch.testing.assert_close(dense.tokens, expected, rtol=1e-5, atol=1e-5)


def test_global_zero_shot_is_the_same_in_every_mode(backbones):
    classes = ["circle", "square", "triangle"]
    images = images_for(backbones("open_clip_vit", None, "tokens"), n=3, seed=5)
    logits = {}
    for mode in DENSE_MODES:
        model = MultiLabelCLIP(backbones("open_clip_vit", None, mode), classes, ModelConfig.of(method="zero_shot"))
        with torch.no_grad():
            logits[mode] = model(images).logits
    for mode in DENSE_MODES[1:]:
        torch.testing.assert_close(logits[mode], logits["tokens"], rtol=1e-5, atol=1e-4)


# open_clip and transformers on the same weights ---------------------------------------------------
def port_vision_to_transformers(model, hidden_act):
    """A transformers CLIPModel whose vision tower holds the weights of an open_clip ViT."""
    from transformers import CLIPConfig, CLIPModel

    visual = model.visual
    blocks = visual.transformer.resblocks
    width = visual.conv1.out_channels
    config = CLIPConfig(
        projection_dim=visual.output_dim,
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=49408, max_position_embeddings=77, eos_token_id=49407),
        vision_config=dict(hidden_size=width, intermediate_size=blocks[0].mlp.c_fc.out_features,
                           num_hidden_layers=len(blocks), num_attention_heads=blocks[0].attn.num_heads,
                           image_size=visual.image_size[0], patch_size=visual.conv1.kernel_size[0],
                           hidden_act=hidden_act, layer_norm_eps=visual.ln_pre.eps),
    )
    hf = CLIPModel(config)
    state = {
        "embeddings.class_embedding": visual.class_embedding,
        "embeddings.patch_embedding.weight": visual.conv1.weight,
        "embeddings.position_embedding.weight": visual.positional_embedding,
        "pre_layrnorm.weight": visual.ln_pre.weight, "pre_layrnorm.bias": visual.ln_pre.bias,
        "post_layernorm.weight": visual.ln_post.weight, "post_layernorm.bias": visual.ln_post.bias,
    }
    for i, block in enumerate(blocks):
        layer = f"encoder.layers.{i}."
        for name, weight, bias in zip("qkv", block.attn.in_proj_weight.chunk(3), block.attn.in_proj_bias.chunk(3)):
            state[layer + f"self_attn.{name}_proj.weight"], state[layer + f"self_attn.{name}_proj.bias"] = weight, bias
        pairs = {"self_attn.out_proj": block.attn.out_proj, "layer_norm1": block.ln_1, "layer_norm2": block.ln_2,
                 "mlp.fc1": block.mlp.c_fc, "mlp.fc2": block.mlp.c_proj}
        for target, module in pairs.items():
            state[layer + target + ".weight"], state[layer + target + ".bias"] = module.weight, module.bias
    missing, unexpected = hf.vision_model.load_state_dict({k: v.detach().clone() for k, v in state.items()},
                                                          strict=False)
    assert not unexpected and not [key for key in missing if "position_ids" not in key]
    hf.visual_projection.weight.data.copy_(visual.proj.detach().T)
    return hf


@pytest.mark.parametrize("size", [None, 96])
@pytest.mark.parametrize("quick_gelu", [False, True])
def test_open_clip_and_transformers_give_the_same_dense_map_for_the_same_weights(quick_gelu, size):
    import open_clip

    register_test_models()
    with torch.random.fork_rng():
        torch.manual_seed(11)
        source = open_clip.create_model("clipml-tiny-vit", force_quick_gelu=quick_gelu)
    ported = {act: port_vision_to_transformers(source, act) for act in ("gelu", "quick_gelu")}
    matching, other = ("quick_gelu", "gelu") if quick_gelu else ("gelu", "quick_gelu")
    for mode in DENSE_MODES:
        ours = OpenCLIPBackbone(copy.deepcopy(source), "clipml-tiny-vit", "random", BackboneConfig(image_size=size, dense=mode))
        theirs = HFCLIPBackbone(copy.deepcopy(ported[matching]), "ported", "random", BackboneConfig(image_size=size, dense=mode))
        wrong = HFCLIPBackbone(copy.deepcopy(ported[other]), "ported", "random", BackboneConfig(image_size=size, dense=mode))
        images = images_for(ours, seed=7)
        with torch.no_grad():
            a, b, c = ours.encode_dense(images), theirs.encode_dense(images), wrong.encode_dense(images)
        torch.testing.assert_close(b.tokens, a.tokens, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.pooled, a.pooled, rtol=1e-5, atol=1e-5)
        assert a.grid == b.grid
        # The activation must match: quick_gelu and gelu give other maps.
        assert (c.tokens - a.tokens).abs().max() > 1e-3


# Errors, configuration, identity ---------------------------------------------------------------------
def test_a_resnet_refuses_a_vit_mode_and_unknown_modes_are_refused():
    for mode in DENSE_MODES[1:]:
        with pytest.raises(BackboneError, match=f"ModifiedResNet: dense mode '{mode}' applies to ViT towers only"):
            load_backbone(BackboneConfig("open_clip:clipml-tiny-rn", allow_random=True, dense=mode))
    assert "dense" not in load_backbone(BackboneConfig("open_clip:clipml-tiny-rn", allow_random=True)).identity
    with pytest.raises(BackboneError, match="unknown dense mode 'maskclip': expected one of tokens, value"):
        load_backbone(BackboneConfig("open_clip:clipml-tiny-vit", allow_random=True, dense="maskclip"))


def test_the_config_option_reaches_the_backbone(tmp_path):
    assert typing.get_args(typing.get_type_hints(BackboneConfig)["dense"]) == DENSE_MODES
    cfg = load_config(ExperimentConfig, None, [
        "backbone.spec=hf:clipml-tiny-hf", "backbone.allow_random=true", "backbone.dense=clearclip", "device=cpu"])
    assert build_backbone(cfg).identity["dense"] == "clearclip"
    with pytest.raises(ConfigError, match="backbone.dense"):
        load_config(ExperimentConfig, None, ["backbone.dense=values"])


def test_the_default_mode_leaves_identities_caches_and_checkpoints_as_before(backbones):
    """Only a mode other than "tokens" enters the identity: caches and checkpoints made before
    dense modes existed keep their keys."""
    assert "dense" not in backbones("open_clip_vit", None, "tokens").identity
    value = backbones("open_clip_vit", None, "value").identity
    assert value == dict(backbones("open_clip_vit", None, "tokens").identity, dense="value")


def test_a_checkpoint_of_another_mode_warns(caplog):
    identity = {"library": "open_clip", "model": "m", "weights": "w", "embed_dim": 32, "image_size": 32}
    with caplog.at_level(logging.WARNING, logger="clipml"):
        check_backbone({"backbone": dict(identity)}, dict(identity), "old.safetensors")
        check_backbone({"backbone": dict(identity, dense="sclip")}, dict(identity, dense="sclip"), "same.safetensors")
        assert "dense mode" not in caplog.text
        check_backbone({"backbone": dict(identity)}, dict(identity, dense="sclip"), "x.safetensors")
        check_backbone({"backbone": dict(identity, dense="value")}, dict(identity), "y.safetensors")
    assert "x.safetensors was learned on dense mode 'tokens', used with 'sclip'" in caplog.text
    assert "y.safetensors was learned on dense mode 'value', used with 'tokens'" in caplog.text


def test_modes_leave_the_tower_frozen(backbones):
    backbone = backbones("hf_vit", None, "sclip")
    images = images_for(backbone).requires_grad_(True)
    dense = backbone.encode_dense(images)
    (dense.tokens.sum() + dense.pooled.sum()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    assert not any(isinstance(m, nn.Module) and m.training for m in backbone.modules())
