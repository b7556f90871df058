"""The backbone-family seam: a family is one module plus its registration; the contract, not the
callers, says where a text's feature is read, how far its ids may be cut, and how the tower scores
(its logit scale and bias, its zero-shot probability rule)."""

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipml.backbones import FAMILIES, BackboneConfig, load_backbone, register_family, register_test_models
from clipml.backbones.open_clip import OpenCLIPBackbone, create_open_clip
from clipml.errors import BackboneError, ConfigError
from clipml.model import ModelConfig, MultiLabelCLIP
from clipml.prompts import ContextPrompts, handcrafted_text_features
from conftest import tiny_backbone

CLASSES = ["dog", "dining table", "x"]
SHIFT = 8  # CLIP's end-of-text id 49407 becomes 7, its start token 6, padding 8


# A family of its own, as a new module under clipml/backbones/ would hold it: the tiny open_clip
# ViT under a shifted vocabulary, so its end-of-text token has a small id, not the largest.
class ShiftedVocabulary(OpenCLIPBackbone):
    """Token ids are CLIP's shifted by SHIFT (mod the vocabulary), the embedding rows alike: every
    text's features are exactly the library's on CLIP's own ids."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.vocabulary = self.text_tower.token_embedding.num_embeddings
        self.end_token_id = (self._tokenizer.eot_token_id + SHIFT) % self.vocabulary

    def tokenize(self, texts):
        return (super().tokenize(texts) + SHIFT) % self.vocabulary

    def token_embedding(self, ids):
        return super().token_embedding((ids - SHIFT) % self.vocabulary)


@register_family("shifted", "shifted:OPEN_CLIP_TEST_MODEL")
def build_shifted(source, config):
    register_test_models()
    model, weights = create_open_clip(source, None, config.allow_random)
    return ShiftedVocabulary(model, source, weights, config)


@pytest.fixture(scope="module")
def shifted():
    torch.manual_seed(0)
    return load_backbone(BackboneConfig("shifted:clipml-tiny-vit", allow_random=True))


def library_text(backbone, texts):
    """open_clip's own encode_text on CLIP's own ids (the shifted family's oracle)."""
    with torch.no_grad():
        return backbone.model.encode_text(open_clip.tokenize(list(texts), context_length=backbone.context_length))


def test_a_registered_family_loads_through_load_backbone(shifted):
    assert FAMILIES["shifted"].build is build_shifted and isinstance(shifted, ShiftedVocabulary)
    ids = shifted.tokenize(["a photo of a dog."])
    assert int(ids.argmax()) != int(shifted.pooled_positions(ids)[0])  # the end token is not the largest id
    with pytest.raises(BackboneError, match="'shifted:OPEN_CLIP_TEST_MODEL'"):
        load_backbone("nope:clipml-tiny-vit")
    with pytest.raises(ValueError, match="already registered"):
        register_family("shifted", "shifted:X")(lambda source, config: None)


def test_pooled_position_comes_from_the_family_not_the_largest_id(shifted):
    texts = [f"a photo of a {name}." for name in CLASSES]
    with torch.no_grad():
        torch.testing.assert_close(shifted.encode_text(texts), library_text(shifted, texts), rtol=1e-5, atol=1e-5)
        dense = shifted.encode_text_dense(texts)
    lengths = open_clip.tokenize(texts).argmax(dim=-1) + 1  # CLIP's ids: start .. end token
    assert dense.grid[1] == int(lengths.max())  # cut after the longest text (causal tower)
    torch.testing.assert_close(dense.mask.sum(dim=-1), lengths)
    torch.testing.assert_close(handcrafted_text_features(shifted, CLASSES),
                               F.normalize(library_text(shifted, texts), dim=-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["shifted", "open_clip_vit", "open_clip_rn", "hf_vit"])
def test_context_prompts_with_init_words_equal_the_library_on_those_words(shifted, family):
    """n_ctx context slots started from "a photo of a" are that hand-written prompt: the slots, the
    word ids and the pooled position all come from the backbone."""
    backbone = shifted if family == "shifted" else tiny_backbone(family)
    prompts = ContextPrompts(backbone, CLASSES, n_ctx=4, class_specific=True, init="a photo of a")
    texts = [f"a photo of a {name}." for name in CLASSES]
    with torch.no_grad():
        ours = prompts()
        theirs = (library_text(backbone, texts) if family != "hf_vit" else backbone.model.get_text_features(
            input_ids=backbone.tokenize(texts)).pooler_output)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="more than model.n_ctx=2"):
        ContextPrompts(backbone, CLASSES, n_ctx=2, init="a photo of a")


def library_logits(model, images, texts):
    """open_clip's own image-text logits: its scale (and bias, where the model has one) on cosines."""
    with torch.no_grad():
        out = model(images, open_clip.tokenize(texts))
    image, text, scale = out[:3]
    logits = scale * image @ text.T
    return logits + out[3] if len(out) > 3 else logits


def test_zero_shot_with_temperature_null_scores_as_the_library_with_softmax_for_clip():
    backbone = tiny_backbone("open_clip_vit")
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(1))
    texts = [f"a photo of a {name}." for name in CLASSES]
    zero_shot = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="zero_shot", temperature=None))
    with torch.no_grad():
        logits = zero_shot(images).logits
    expected = library_logits(backbone.model, images, texts)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert backbone.logit_bias is None and zero_shot.head.bias is None
    torch.testing.assert_close(backbone.zero_shot_probabilities(logits), expected.softmax(dim=-1))
    # The default stays model.temperature=100, whatever the tower's own scale (here 1/0.07).
    assert backbone.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    default = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="zero_shot"))
    assert float(default.head.log_temperature.exp()) == pytest.approx(100.0)
    with pytest.raises(ConfigError, match="model.temperature must be positive"):
        MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="zero_shot", temperature=0.0))


def test_a_sigmoid_trained_tower_brings_its_bias_and_the_sigmoid_rule():
    """An open_clip model with a learned logit bias (SigLIP's recipe): zero-shot with temperature
    null is its own logits, its probability each class's sigmoid; learned heads start from its bias."""
    register_test_models()
    torch.manual_seed(0)
    model = open_clip.create_model("clipml-tiny-vit-customtext", init_logit_bias=-10.0)
    backbone = OpenCLIPBackbone(copy.deepcopy(model), "clipml-tiny-vit-customtext", "random")
    assert backbone.logit_bias == pytest.approx(-10.0) and backbone.zero_shot_rule == "sigmoid"
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(2))
    zero_shot = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="zero_shot", temperature=None))
    with torch.no_grad():
        logits = zero_shot(images).logits
    expected = library_logits(backbone.model, images, [f"a photo of a {name}." for name in CLASSES])
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(backbone.zero_shot_probabilities(logits), torch.sigmoid(expected))
    assert not any(p is zero_shot.head.bias for p in zero_shot.parameters())  # the tower's, not learned
    learned = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="csc_global", n_ctx=2, temperature=None))
    assert float(learned.head.bias.detach()) == pytest.approx(-10.0) and learned.head.bias.requires_grad
    chosen = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="csc_global", n_ctx=2, temperature=None,
                                                           logit_bias=-3.0))
    assert float(chosen.head.bias.detach()) == pytest.approx(-3.0)
    assert MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="zero_shot")).head.bias is None  # temperature 100
