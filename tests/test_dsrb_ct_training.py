"""DSRB blending and the conditional-transport term wired into the model, trainer and checkpoints."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipml.engine.checkpoint import load_into, model_tensors
from clipml.engine.train import load_model, train, training_loss
from clipml.errors import ConfigError
from clipml.losses import build_loss
from clipml.model import BlendingConfig, ModelConfig, MultiLabelCLIP, TransportConfig
from test_engine import tiny_config

CLASSES = ["cat", "dog", "car", "tree"]
DSRB_CT = ["model.blending.instance=true", "model.blending.prototype=true", "model.blending.start_epoch=1",
           "model.blending.prototype_every=1", "model.transport.enabled=true", "model.transport.background=true",
           "optim.epochs=3", "data.options={num_images: 96}"]


def blended_model(backbone, **blend):
    torch.manual_seed(0)
    config = ModelConfig(method="sdm_csp", n_ctx=4, decoupler_dim=16,
                         blending=BlendingConfig(instance=True, prototype=True, **blend),
                         transport=TransportConfig(enabled=True, background=True))
    return MultiLabelCLIP(backbone, CLASSES, config)


def test_eval_logits_unchanged_by_blending(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    with_blend = blended_model(backbone)
    torch.manual_seed(0)
    plain = MultiLabelCLIP(backbone, CLASSES, ModelConfig(method="sdm_csp", n_ctx=4, decoupler_dim=16))
    plain.load_state_dict(with_blend.state_dict(), strict=False)
    with torch.no_grad():
        with_blend.blending.prototypes.normal_()
        with_blend.blending.prototype_valid.fill_(True)
    images = torch.randn(3, 3, backbone.image_size, backbone.image_size)
    with torch.no_grad():
        torch.testing.assert_close(with_blend(images).logits, plain(images).logits, rtol=0, atol=0)


def test_training_loss_adds_branches_and_reaches_alpha_beta_and_background(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    model = blended_model(backbone)
    with torch.no_grad():
        model.blending.prototypes.normal_()
        model.blending.prototype_valid.fill_(True)
    images = torch.randn(4, 3, backbone.image_size, backbone.image_size)
    labels = torch.tensor([[1, -1, 0, -1], [-1, 1, -1, 0], [0, -1, 1, -1], [1, 1, -1, -1]], dtype=torch.int8)
    dense = model.encode(images)
    loss_fn = build_loss("bce")
    plain = training_loss(model, loss_fn, dense, labels, blending=False)
    full = training_loss(model, loss_fn, dense, labels, blending=True, generator=torch.Generator().manual_seed(0))
    assert full > plain  # the blended branches add their own (positive) losses
    full.backward()
    for parameter in (model.blending.alpha, model.blending.beta, model.transport.background, model.prompts.ctx):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_blending_needs_per_class_features(tiny_backbones):
    config = ModelConfig(method="dualcoop", n_ctx=4, blending=BlendingConfig(instance=True))
    with pytest.raises(ConfigError, match="per-class features"):
        MultiLabelCLIP(tiny_backbones["open_clip_vit"], CLASSES, config)


def test_checkpoint_carries_prototypes_alpha_beta_background(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    model = blended_model(backbone)
    with torch.no_grad():
        model.blending.prototypes.normal_()
        model.blending.prototype_valid[1:3] = True
        model.blending.alpha.fill_(0.3)
    tensors = model_tensors(model)
    for key in ("blending.alpha", "blending.beta", "blending.prototypes", "blending.prototype_valid",
                "transport.background"):
        assert key in tensors
    other = blended_model(backbone)
    metadata = {"method": "sdm_csp", "classes": CLASSES, "backbone": backbone.identity}
    load_into(other, tensors, metadata)
    for key, value in model_tensors(other).items():
        torch.testing.assert_close(value, tensors[key], rtol=0, atol=0)
    # Transfer to a reordered class list moves the prototype rows with their classes.
    reordered = MultiLabelCLIP(backbone, CLASSES[::-1], other.config)
    load_into(reordered, tensors, metadata)
    torch.testing.assert_close(reordered.blending.prototypes, tensors["blending.prototypes"].flip(0))


def test_resume_with_dsrb_and_ct_equals_uninterrupted(tmp_path):
    full_cfg = tiny_config(tmp_path, "name=full", *DSRB_CT)
    train(full_cfg, resume=False)
    cfg = tiny_config(tmp_path, "name=cut", *DSRB_CT)

    def stop(iterable, desc):
        if desc == "epoch 3/3":
            raise KeyboardInterrupt
        return iterable

    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=stop)
    train(cfg)
    full = load_file(str(Path(full_cfg.run_dir()) / "last.safetensors"))
    resumed = load_file(str(Path(cfg.run_dir()) / "last.safetensors"))
    assert full["blending.prototype_valid"].any()  # prototypes were computed and saved
    assert float(full["blending.alpha"]) != 0.5  # α learned
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0)
    model = load_model(str(Path(cfg.run_dir()) / "prompts.safetensors"))
    assert model.blending.prototype_valid.any()
