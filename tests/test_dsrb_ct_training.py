"""DSRB blending and the conditional-transport term wired into the model, trainer and checkpoints."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipml.blending import category_contrastive
from clipml.engine.checkpoint import load_into, load_model, model_tensors
from clipml.engine.train import train, training_loss
from clipml.methods import Step
from clipml.errors import ConfigError
from clipml.losses import build_loss
from clipml.model import BlendingConfig, ModelConfig, MultiLabelCLIP, TransportConfig
from test_engine import tiny_config

pytestmark = pytest.mark.integration  # trains end to end: left out of the quick subset

CLASSES = ["cat", "dog", "car", "tree"]
DSRB_CT = ["model.blending.instance=true", "model.blending.prototype=true", "model.blending.start_epoch=1",
           "model.blending.prototype_every=1", "model.transport.enabled=true", "model.transport.background=true",
           "optim.epochs=3", "data.options={num_images: 96}"]


def blended_model(backbone, **blend):
    torch.manual_seed(0)
    config = ModelConfig.of(method="sdm_csp", n_ctx=4, decoupler_dim=16,
                         blending=BlendingConfig(instance=True, prototype=True, **blend),
                         transport=TransportConfig(enabled=True, background=True))
    return MultiLabelCLIP(backbone, CLASSES, config)


def test_eval_logits_unchanged_by_blending(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    with_blend = blended_model(backbone)
    torch.manual_seed(0)
    plain = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="sdm_csp", n_ctx=4, decoupler_dim=16))
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
    plain = training_loss(model, loss_fn, dense, labels)
    full = training_loss(model, loss_fn, dense, labels, Step(10**6, generator=torch.Generator().manual_seed(0)))
    assert full > plain  # the blended branches add their own (positive) losses
    full.backward()
    for parameter in (model.blending.alpha, model.blending.beta, model.transport.background, model.prompts.ctx):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


LABELS = torch.tensor([[1, -1, 0, -1], [-1, 1, -1, 0], [0, -1, 1, -1], [1, 1, -1, -1]], dtype=torch.int8)


def test_contrastive_weight_adds_exactly_its_term_and_reaches_the_decoupler(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    torch.manual_seed(0)
    model = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="sdm_csp", n_ctx=4, decoupler_dim=16,
                                                          blending=BlendingConfig(instance=True)))
    dense = model.encode(torch.randn(4, 3, backbone.image_size, backbone.image_size))
    loss_fn = build_loss("bce")
    targets, known = (LABELS == 1).float(), LABELS != -1
    output = model.forward_dense(dense)
    features, soft, mask = model.blending.instance_blend(output.features, targets, known)
    old = loss_fn(output.logits, targets, known) + loss_fn(model.head(features, output.text), soft, mask)
    torch.testing.assert_close(training_loss(model, loss_fn, dense, LABELS, Step(10**6)), old, rtol=0, atol=0)

    model.config.blending.contrastive_weight = 0.05
    term = category_contrastive(output.features, targets, known)
    assert term > 0  # class 0: a positive pair (0, 3) and positive-negative pairs with image 2
    torch.testing.assert_close(training_loss(model, loss_fn, dense, LABELS, Step(10**6)), old + 0.05 * term,
                               rtol=0, atol=0)
    (0.05 * term).backward()
    for parameter in (model.decoupler.U.weight, model.decoupler.V.weight, model.decoupler.P.weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_contrastive_term_alone_follows_the_start_epoch(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    torch.manual_seed(0)
    config = ModelConfig.of(method="sdm_csp", n_ctx=4, decoupler_dim=16,
                         blending=BlendingConfig(contrastive_weight=0.05, start_epoch=2))
    model = MultiLabelCLIP(backbone, CLASSES, config)
    assert not hasattr(model, "blending")  # no blend branch: no α, β or prototypes
    assert [model.terms[0].blending(epoch) for epoch in range(4)] == [False, False, True, True]
    dense = model.encode(torch.randn(4, 3, backbone.image_size, backbone.image_size))
    loss_fn = build_loss("bce")
    output = model.forward_dense(dense)
    term = category_contrastive(output.features, (LABELS == 1).float(), LABELS != -1)
    plain = training_loss(model, loss_fn, dense, LABELS)
    torch.testing.assert_close(plain, loss_fn(output.logits, (LABELS == 1).float(), LABELS != -1), rtol=0, atol=0)
    torch.testing.assert_close(training_loss(model, loss_fn, dense, LABELS, Step(10**6)), plain + 0.05 * term,
                               rtol=0, atol=0)


@pytest.mark.parametrize(
    "method, blending, message",
    [
        ("dualcoop", {"instance": True}, "per-class features"),
        ("dualcoop", {"contrastive_weight": 0.05}, "per-class features"),
        ("sdm_csp", {"contrastive_weight": -0.05}, "contrastive_weight must be >= 0 .*, got -0.05"),
    ],
)
def test_blending_settings_rejected_when_the_config_is_built(method, blending, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(method=method, n_ctx=4, blending=BlendingConfig(**blending))


def test_training_step_with_contrastive_term_moves_the_decoupler(tmp_path):
    # One batch of the whole training part, one epoch: a single step from the same start.
    common = ["model.method=sdm_csp", "model.blending.instance=true", "model.blending.start_epoch=0",
              "optim.epochs=1", "data.batch_size=128"]
    runs = {}
    for weight in (0.0, 0.05):
        cfg = tiny_config(tmp_path, f"name=w{weight}", *common, f"model.blending.contrastive_weight={weight}")
        summary = train(cfg, resume=False)
        runs[weight] = (summary["history"][0]["loss"], load_file(str(Path(cfg.run_dir()) / "last.safetensors")))
    (loss_off, off), (loss_on, on) = runs[0.0], runs[0.05]
    assert loss_on > loss_off  # the same loss at the same start, plus 0.05 x a positive term
    for key in ("decoupler.U.weight", "decoupler.V.weight", "decoupler.P.weight"):
        assert torch.isfinite(on[key]).all() and not torch.equal(on[key], off[key]), key


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


def stopped_and_resumed(tmp_path, overrides, stop_before):
    """(last weights of an uninterrupted run, of one stopped before epoch `stop_before` and resumed,
    the resumed run's config)."""
    full_cfg = tiny_config(tmp_path, "name=full", *overrides)
    train(full_cfg, resume=False)
    cfg = tiny_config(tmp_path, "name=cut", *overrides)

    def stop(iterable, desc):
        if desc == f"epoch {stop_before}/3":
            raise KeyboardInterrupt
        return iterable

    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=stop)
    train(cfg)
    full = load_file(str(Path(full_cfg.run_dir()) / "last.safetensors"))
    return full, load_file(str(Path(cfg.run_dir()) / "last.safetensors")), cfg


def test_resume_with_dsrb_and_ct_equals_uninterrupted(tmp_path):
    full, resumed, cfg = stopped_and_resumed(tmp_path, DSRB_CT, stop_before=3)
    assert full["blending.prototype_valid"].any()  # prototypes were computed and saved
    assert float(full["blending.alpha"]) != 0.5  # α learned
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0)
    model = load_model(str(Path(cfg.run_dir()) / "prompts.safetensors"))
    assert model.blending.prototype_valid.any()


def test_resume_with_sampled_classes_equals_uninterrupted(tmp_path):
    """PPRB blends classes drawn among each step's sampled classes, so the draws move the weights;
    a run stopped after epoch 1 and resumed must draw epochs 2-3 as the uninterrupted run did."""
    sampled = [*DSRB_CT, "optim.sampled_classes=12", "data.batch_size=4", "data.known_ratio=0.1"]
    full, resumed, _ = stopped_and_resumed(tmp_path, sampled, stop_before=2)
    assert float(full["blending.beta"]) != 0.5  # PPRB blended
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0)


def test_contrastive_share_and_form_reach_the_training_loss(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    torch.manual_seed(0)
    config = ModelConfig.of(method="sdm_csp", n_ctx=4, decoupler_dim=16, decoupler_extra_linear=True,
                         blending=BlendingConfig(contrastive_weight=0.05, contrastive_form="mined",
                                                 contrastive_schedule="from_start"))
    model = MultiLabelCLIP(backbone, CLASSES, config)
    dense = model.encode(torch.randn(4, 3, backbone.image_size, backbone.image_size))
    loss_fn = build_loss("bce")
    output = model.forward_dense(dense)
    term = category_contrastive(output.features, (LABELS == 1).float(), LABELS != -1, "mined",
                                torch.Generator().manual_seed(3))
    plain = training_loss(model, loss_fn, dense, LABELS)
    ramped = training_loss(model, loss_fn, dense, LABELS, Step(0, 1, 2, torch.Generator().manual_seed(3)))
    torch.testing.assert_close(ramped, plain + 0.5 * 0.05 * term, rtol=0, atol=0)
    torch.testing.assert_close(training_loss(model, loss_fn, dense, LABELS, Step(0, 0, 2)), plain,
                               rtol=0, atol=0)


def test_training_with_the_reference_rules(tmp_path):
    # DSRB with every reference rule (config keys of the published sdm_csp_dsrb configs, plus the extra
    # decoupler layer); "from_start" puts the contrastive term in the first epoch, "with_blending" does not.
    rules = ["model.method=sdm_csp", "model.blending.instance=true", "model.blending.prototype=true",
             "model.blending.start_epoch=1", "model.blending.prototype_every=1", "model.blending.peak=feature",
             "model.blending.empty_cells=class_mean", "model.blending.contrastive_weight=0.05",
             "model.blending.contrastive_form=mined", "model.sdm_csp.decoupler_extra_linear=true", "loss.name=asl",
             "loss.soft_focusing=mixed", "optim.epochs=2", "data.options={num_images: 96}"]
    first_epoch = {}
    for schedule in ("from_start", "with_blending"):
        cfg = tiny_config(tmp_path, f"name={schedule}", *rules, f"model.blending.contrastive_schedule={schedule}")
        summary = train(cfg, resume=False)
        first_epoch[schedule] = summary["history"][0]["loss"]
        saved = load_file(str(Path(cfg.run_dir()) / "last.safetensors"))
        valid = saved["blending.prototype_valid"]
        assert valid.any() and bool((valid.all(dim=1) | ~valid.any(dim=1)).all())  # class_mean fills whole rows
        assert "decoupler.H.weight" in saved
    assert first_epoch["from_start"] != first_epoch["with_blending"]
