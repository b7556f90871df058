"""Every registered method on every tiny tower (conftest.EVERY_TOWER): two training steps on
partial labels, a checkpoint, a reload (the tower rebuilt from the checkpoint's config), and the
reloaded model predicts what the trained one does."""

import pytest
import torch

from clipml.backbones import load_backbone
from clipml.config import config_to_dict, load_config
from clipml.engine.checkpoint import load_model, save_prompt_checkpoint
from clipml.experiment import ExperimentConfig
from clipml.losses import partial_bce
from clipml.methods import METHODS
from clipml.model import MultiLabelCLIP
from conftest import EVERY_TOWER

CLASSES = ["dog", "dining table", "cat"]
SMALL = {"sdm_csp": ["model.sdm_csp.decoupler_dim=8"]}


@pytest.fixture(scope="module")
def towers():
    return {}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("spec", EVERY_TOWER)
def test_a_method_trains_saves_reloads_and_predicts_on_a_tower(towers, spec, method, tmp_path):
    cfg = load_config(ExperimentConfig, None, [f"backbone.spec={spec}", "backbone.allow_random=true",
                                               f"model.method={method}", "model.n_ctx=2", *SMALL.get(method, [])])
    if spec not in towers:
        torch.manual_seed(0)
        towers[spec] = load_backbone(cfg.backbone)
    backbone = towers[spec]
    torch.manual_seed(0)
    model = MultiLabelCLIP(backbone, CLASSES, cfg.model)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, backbone.image_size, backbone.image_size, generator=generator)
    targets = torch.randint(0, 2, (4, len(CLASSES)), generator=generator)
    known = torch.rand(4, len(CLASSES), generator=generator) < 0.6  # partial labels
    parameters = model.trainable_parameters()
    before = [p.detach().clone() for p in parameters]
    if parameters:
        optimizer = torch.optim.AdamW(parameters, lr=0.01)
        for _ in range(2):
            loss = partial_bce(model(images).logits, targets, known)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert any(not torch.equal(a, b) for a, b in zip(before, parameters)), "training changed nothing"
    path = save_prompt_checkpoint(tmp_path / "model.safetensors", model, config_to_dict(cfg))
    reloaded = load_model(path)
    assert reloaded.backbone.identity == backbone.identity
    with torch.no_grad():
        expected = model(images).logits
        torch.testing.assert_close(reloaded(images).logits, expected, rtol=1e-4, atol=1e-5)
    assert expected.shape == (4, len(CLASSES)) and torch.isfinite(expected).all()


@pytest.mark.parametrize("spec", EVERY_TOWER)
def test_encode_image_is_the_pooled_feature_of_encode_dense(towers, spec):
    """Two paths to the global feature: the library's own forward (timm towers) or the dense pass's."""
    if spec not in towers:
        torch.manual_seed(0)
        towers[spec] = load_backbone(load_config(ExperimentConfig, None, [f"backbone.spec={spec}",
                                                                          "backbone.allow_random=true"]).backbone)
    backbone = towers[spec]
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pooled = backbone.encode_dense(images).pooled
        scale = pooled.abs().max()
        torch.testing.assert_close(backbone.encode_image(images) / scale, pooled / scale, rtol=0, atol=1e-5)


@pytest.mark.parametrize("spec", ["open_clip:clipml-tiny-siglip", "open_clip:clipml-tiny-siglip2"])
def test_learned_contexts_that_would_cut_the_class_name_are_refused(towers, spec):
    """The tiny SigLIP towers hold 16 tokens a prompt and their tokenizers truncate silently: a prompt
    whose contexts push the class name past the end is one error naming the class, not a cut prompt."""
    from clipml.errors import BackboneError

    if spec not in towers:
        torch.manual_seed(0)
        towers[spec] = load_backbone(load_config(ExperimentConfig, None, [f"backbone.spec={spec}",
                                                                          "backbone.allow_random=true"]).backbone)
    backbone = towers[spec]
    assert backbone.context_length == 16
    ids, context = backbone.context_prompt_ids(["dog", "traffic light"], 4)
    lengths = backbone.text_lengths(ids)
    assert bool((lengths < backbone.context_length).all())  # the end (or padding) follows the class name
    with pytest.raises(BackboneError, match="leave no room for the class name"):
        backbone.context_prompt_ids(["dog"], 16)
    with pytest.raises(BackboneError, match="the prompt of class 'traffic light' .* may be cut"):
        backbone.context_prompt_ids(["traffic light"], 13)
