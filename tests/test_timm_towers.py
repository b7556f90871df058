"""open_clip towers with timm image towers ending in a MAP head (SigLIP, SigLIP 2, PE-Core), on
tiny random configs of each (clipml.backbones.tiny_towers): against open_clip's own encoders,
the pooling head's mixture identity, their tokenizers' layouts, and their scoring."""

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F
from tokenizers import normalizers

from clipml.backbones import BackboneConfig, load_backbone, register_test_models
from clipml.backbones.base import trainable_parameters
from clipml.backbones.open_clip import OpenCLIPBackbone, _own_tokenizer, _preprocess_of_tags
from clipml.errors import BackboneError
from clipml.model import ModelConfig, MultiLabelCLIP
from clipml.prompts import ContextPrompts

MAP_TOWERS = ["clipml-tiny-siglip", "clipml-tiny-siglip2", "clipml-tiny-pe-core"]
CLASSES = ["dog", "dining table", "x"]
PROMPTS = [f"a photo of a {name}." for name in CLASSES]


def tower(name, **config):
    return load_backbone(BackboneConfig(f"open_clip:{name}", allow_random=True, **config))


@pytest.fixture(scope="module")
def towers():
    return {name: tower(name) for name in MAP_TOWERS}


def images_for(backbone, n=2, seed=0):
    return torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(seed))


def head_oracle(backbone, images):
    """(attention [B, heads, T], values [B, T, C], head tail) of the MAP head, from timm's modules
    with the attention written out (no SDPA): T are the tokens the pool reads."""
    trunk = backbone.model.visual.trunk
    pool = trunk.attn_pool
    x = trunk.forward_features(images)
    if not getattr(trunk, "pool_include_prefix", True):
        x = x[:, trunk.num_prefix_tokens:]
    batch, tokens, width = x.shape
    heads, dim = pool.num_heads, width // pool.num_heads
    keys, values = pool.kv(x).split(width, dim=-1)
    query = pool.q(pool.latent)[0, 0].reshape(heads, dim)
    scores = torch.einsum("hd,bthd->bht", query, keys.reshape(batch, tokens, heads, dim)) * dim ** -0.5
    visual = backbone.model.visual

    def tail(z):  # everything after the attention: proj, the residual MLP, the projections
        z = pool.proj(z)
        return visual.head(trunk.head(trunk.fc_norm(z + pool.mlp(pool.norm(z)))))

    return scores.softmax(dim=-1), values, tail


def per_head_mixture(attention, values):
    batch, tokens, width = values.shape
    heads = attention.shape[1]
    split = values.reshape(batch, tokens, heads, width // heads)
    return torch.einsum("bht,bthd->bhd", attention, split).reshape(batch, width)


@pytest.mark.parametrize("name", MAP_TOWERS)
def test_pooled_equals_open_clip_encode_image_and_towers_are_frozen(towers, name):
    backbone = towers[name]
    images = images_for(backbone)
    with torch.no_grad():
        theirs = backbone.model.encode_image(images)
        dense = backbone.encode_dense(images)
        torch.testing.assert_close(dense.pooled, theirs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(backbone.encode_image(images), theirs, rtol=1e-5, atol=1e-5)
    assert dense.grid == (4, 4) and dense.tokens.shape == (2, 16, backbone.embed_dim)
    assert trainable_parameters(backbone) == [] and not backbone.training
    assert backbone.identity == {"library": "open_clip", "model": name, "weights": "random", "image_size": 32,
                                 "embed_dim": backbone.embed_dim}


@pytest.mark.parametrize("name", MAP_TOWERS)
def test_dense_tokens_are_each_patch_value_through_the_heads_tail(towers, name):
    """t_j = tail(v_j): the head as if its attention were all on patch j; the pooled embedding is
    the tail of the per-head attention mixture of the same values (the exact, affine part)."""
    backbone = towers[name]
    images = images_for(backbone, seed=1)
    prefix = backbone.image_tower.pool_prefix  # PE-Core's pool reads its class token too
    with torch.no_grad():
        attention, values, tail = head_oracle(backbone, images)
        dense = backbone.encode_dense(images)
        torch.testing.assert_close(dense.tokens, tail(values[:, prefix:]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dense.pooled, tail(per_head_mixture(attention, values)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MAP_TOWERS)
def test_pooled_is_the_attention_mixture_of_the_dense_tokens_exactly_where_the_head_is_affine(name):
    """METHODS §1's identity for a MAP head: with all heads attending alike (here: a zero query,
    uniform attention) the pooled embedding is the mixture (the mean) of the per-token vectors
    exactly when the residual MLP is affine (fc2 zeroed: a constant); the real MLP breaks it."""
    backbone = copy.deepcopy(tower(name))
    pool = backbone.model.visual.trunk.attn_pool
    prefix = backbone.image_tower.pool_prefix
    images = images_for(backbone, seed=2)
    with torch.no_grad():
        pool.q.weight.zero_()
        pool.q.bias.zero_()

        def mixture_gap():
            _, values, tail = head_oracle(backbone, images)
            dense = backbone.encode_dense(images)
            every = torch.cat([tail(values[:, :prefix]), dense.tokens], dim=1)  # prefix tokens too
            return (dense.pooled - every.mean(dim=1)).abs().max() / dense.pooled.abs().max()

        nonlinear = mixture_gap()
        pool.mlp.fc2.weight.zero_()
        affine = mixture_gap()
    assert nonlinear > 1e-2 and affine < 1e-5


@pytest.mark.parametrize("name", ["clipml-tiny-siglip", "clipml-tiny-pe-core"])
def test_another_image_size_equals_open_clips_own_resize(name):
    """At 48 px with timm's kernel (bicubic_antialias), exactly open_clip's set_input_size."""
    backbone = tower(name, image_size=48, pos_embed_resize="bicubic_antialias")
    register_test_models()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = open_clip.create_model(name)
    model.visual.set_input_size(48)
    images = images_for(backbone)
    with torch.no_grad():
        dense = backbone.encode_dense(images)
        torch.testing.assert_close(dense.pooled, model.encode_image(images), rtol=1e-5, atol=1e-5)
    assert dense.grid == (6, 6) and backbone.identity["pos_embed_resize"] == "bicubic_antialias"
    with pytest.raises(BackboneError, match="positive multiple of 8"):
        tower(name, image_size=44)


def test_other_dense_modes_are_refused_for_a_map_head():
    with pytest.raises(BackboneError, match="MAP-head image tower.*dense='tokens'"):
        tower("clipml-tiny-siglip", dense="clearclip")


@pytest.mark.parametrize("name", MAP_TOWERS)
def test_hand_written_prompts_reproduce_open_clips_encode_text(towers, name):
    """Ids from the model's own tokenizer; context slots started from "a photo of a" are that
    prompt; the pooled position (SigLIP: the last, after the padding) comes from the tower."""
    backbone = towers[name]
    ids = open_clip.get_tokenizer(name)(PROMPTS)
    torch.testing.assert_close(backbone.tokenize(PROMPTS), ids)
    prompts = ContextPrompts(backbone, CLASSES, n_ctx=4, class_specific=True, init="a photo of a")
    with torch.no_grad():
        theirs = backbone.model.encode_text(ids)
        torch.testing.assert_close(backbone.encode_text(PROMPTS), theirs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(prompts(), theirs, rtol=1e-5, atol=1e-5)
        dense = backbone.encode_text_dense(PROMPTS)
    torch.testing.assert_close(dense.pooled, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, leading, end, pad, lengths, truncatable", [
    ("clipml-tiny-siglip", 0, 1, 1, [6, 7, 6], False),  # T5's layout: words, </s>; </s> pads
    ("clipml-tiny-siglip2", 1, 1, 0, [7, 8, 7], False),  # <bos> words <eos>, <pad> pads
    ("clipml-tiny-pe-core", 1, 49407, 0, [8, 9, 8], True),  # CLIP's tokenizer, causal text tower
])
def test_the_text_layout_is_read_from_each_tokenizer(towers, name, leading, end, pad, lengths, truncatable):
    backbone = towers[name]
    ids = backbone.tokenize(PROMPTS)
    assert (backbone.leading_tokens, backbone.end_token_id, backbone.truncatable) == (leading, end, truncatable)
    assert backbone.text_lengths(ids).tolist() == lengths
    assert backbone.text_ids(PROMPTS).shape[1] == (max(lengths) if truncatable else backbone.context_length)
    assert (ids[:, -1] == pad).all()
    words = backbone.word_ids("dining table")
    assert len(words) == 2 and words.tolist() == ids[1, leading + 4: leading + 6].tolist()
    if not truncatable:  # no causal mask: the pooled last position sees the whole text and padding
        assert backbone.pooled_positions(ids).tolist() == [backbone.context_length - 1] * 3


def test_a_placeholder_that_is_two_tokens_gives_way_to_one_that_is_one(towers):
    """With 'X' split into two tokens by this tokenizer (and '*', '#' removed by SigLIP's text
    cleaning), the context slots hold the next placeholder that is one token each ('a')."""
    backbone = copy.deepcopy(towers["clipml-tiny-siglip"])
    ids, slots = backbone.context_prompt_ids(CLASSES, 3)
    assert (ids[:, slots] == backbone.word_ids("X")).all()
    backend = backbone._tokenizer.tokenizer.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace("x", "dog cat")])
    assert len(backbone.word_ids("X")) == 2
    ids, slots = backbone.context_prompt_ids(CLASSES, 3)
    assert (ids[:, slots] == backbone.word_ids("a")).all() and slots == slice(0, 3)
    backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace("x", "dog cat"),
                                               normalizers.Replace("a", "dog cat")])
    with pytest.raises(BackboneError, match="none of the prompt placeholders"):
        backbone.context_prompt_ids(CLASSES, 3)


def test_a_missing_hub_tokenizer_is_one_error_saying_what_to_download(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no retries against the hub
    with pytest.raises(BackboneError, match=r"tokenizer of open_clip:ViT-B-16-SigLIP2 .*"
                                            r"huggingface-cli download timm/ViT-B-16-SigLIP2"):
        _own_tokenizer("ViT-B-16-SigLIP2", 64)


@pytest.mark.parametrize("name, interpolation", [("ViT-B-16-SigLIP2", "bicubic"), ("PE-Core-B-16", "bilinear")])
def test_a_local_weights_file_gets_the_preprocessing_of_its_models_tags(name, interpolation):
    """open_clip reads the preprocessing from a tag only; a file of SigLIP or PE-Core weights gets
    what the model's tags say (mean and std 0.5, their resize), not CLIP's statistics."""
    register_test_models()
    torch.manual_seed(0)
    model = open_clip.create_model("clipml-tiny-siglip")
    assert model.visual.preprocess_cfg["mean"] == open_clip.OPENAI_DATASET_MEAN
    _preprocess_of_tags(model, name)
    backbone = OpenCLIPBackbone(model, "clipml-tiny-siglip", "random")
    assert (backbone.mean, backbone.std, backbone.interpolation) == ((0.5,) * 3, (0.5,) * 3, interpolation)
    assert model.visual.preprocess_cfg["resize_mode"] == "squash"


@pytest.mark.parametrize("name", ["clipml-tiny-siglip", "clipml-tiny-siglip2"])
def test_a_sigmoid_trained_tower_scores_with_its_scale_bias_and_sigmoid(towers, name):
    """Zero-shot with model.temperature null is open_clip's own logits (scale and learned bias),
    its probabilities each class's sigmoid; a learned cosine head starts from the tower's bias."""
    backbone = towers[name]
    images = images_for(backbone, seed=3)
    zero_shot = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="zero_shot", temperature=None))
    with torch.no_grad():
        logits = zero_shot(images).logits
        image, text, scale, bias = backbone.model(images, backbone.tokenize(PROMPTS))
    torch.testing.assert_close(logits, scale * image @ text.T + bias, rtol=1e-5, atol=1e-5)
    assert backbone.zero_shot_rule == "sigmoid" and backbone.logit_bias == pytest.approx(-10.0)
    torch.testing.assert_close(backbone.zero_shot_probabilities(logits), torch.sigmoid(logits))
    learned = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="csc_global", n_ctx=2, temperature=None))
    assert float(learned.head.bias.detach()) == pytest.approx(-10.0)
    assert float(learned.head.log_temperature.detach().exp()) == pytest.approx(backbone.logit_scale, rel=1e-5)


def test_pe_core_scores_with_softmax_and_no_bias(towers):
    backbone = towers["clipml-tiny-pe-core"]
    logits = torch.randn(2, 3)
    assert backbone.logit_bias is None and backbone.zero_shot_rule == "softmax"
    torch.testing.assert_close(backbone.zero_shot_probabilities(logits), logits.softmax(dim=-1))
    assert F.normalize(backbone.encode_text(PROMPTS), dim=-1).shape == (3, backbone.embed_dim)
