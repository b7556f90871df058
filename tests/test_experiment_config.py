"""Every experiment key is checked when the config is read: a bad value is one ConfigError naming
the key, raised by load_experiment / config_from_dict before any data or weights load."""

import re

import pytest

from clipml.config import config_from_dict, config_to_dict
from clipml.errors import ConfigError
from clipml.experiment import ExperimentConfig, load_experiment

BAD = [  # (overrides, the key the error names)
    # Found by the review: these loaded and failed only after the backbone load (or a cache build).
    (["optim.decoupler_lr_scale=0"], "optim.decoupler_lr_scale"),
    (["model.blending.contrastive_weight=-1"], "model.blending.contrastive_weight"),
    (["model.method=taidpt", "model.taidpt.global_weight=3"], "model.taidpt.global_weight"),
    (["model.taidpt.global_weight=3"], "model.taidpt"),  # a section of a method not selected
    # optim
    (["optim.lr=0"], "optim.lr"),
    (["optim.lr=-0.1"], "optim.lr"),
    (["optim.lr=.nan"], "optim.lr"),
    (["optim.epochs=0"], "optim.epochs"),
    (["optim.momentum=1"], "optim.momentum"),
    (["optim.weight_decay=-1e-4"], "optim.weight_decay"),
    (["optim.warmup_epochs=-1"], "optim.warmup_epochs"),
    (["optim.epochs=2", "optim.warmup_epochs=3"], "optim.warmup_epochs"),
    (["optim.warmup_lr=0"], "optim.warmup_lr"),
    (["optim.grad_clip=0"], "optim.grad_clip"),
    # data
    (["data.known_ratio=0"], "data.known_ratio"),
    (["data.known_ratio=1.5"], "data.known_ratio"),
    (["data.val_fraction=1"], "data.val_fraction"),
    (["data.dataset=''"], "data.dataset"),
    (["data.train_split=''"], "data.train_split"),
    (["data.mask_seed=-1"], "data.mask_seed"),
    (["data.batch_size=0"], "data.batch_size"),
    (["data.eval_batch_size=0"], "data.eval_batch_size"),
    (["data.workers=-1"], "data.workers"),
    (["data.cache_views=0"], "data.cache_views"),
    (["data.cache_views=2", "data.augment=none"], "data.cache_views"),
    (["data.cache_seed=-3"], "data.cache_seed"),
    (["data.captions.source=words.txt", "data.captions.options={limit: 0}"], "data.captions.options.limit"),
    (["data.captions.source=words.txt", "data.captions.options={num_captions: 5}"], "data.captions.options"),
    (["data.captions.source=synthetic", "data.captions.options={num_captions: 0}"],
     "data.captions.options.num_captions"),
    (["data.captions.source=''"], "data.captions.source"),
    # loss
    (["loss.gamma_pos=-1"], "loss.gamma_pos"),
    (["loss.gamma_neg=-2"], "loss.gamma_neg"),
    (["loss.clip=1"], "loss.clip"),
    (["loss.margin=-1"], "loss.margin"),
    (["loss.weight=0"], "loss.weight"),
    (["loss.eps=1"], "loss.eps"),
    # model
    (["model.method=coop", "model.n_ctx=0"], "model.n_ctx"),
    (["model.ctx_init=''"], "model.ctx_init"),
    (["model.method=dualcoop", "model.dualcoop.negative_ctx_init=''"], "model.dualcoop.negative_ctx_init"),
    (["model.ctx_std=-0.1"], "model.ctx_std"),
    (["model.templates=[]"], "model.templates"),
    (["model.templates=['a photo']"], "model.templates"),
    (["model.sdm_csp.guidance=vectors.txt"], "model.sdm_csp.guidance"),
    (["model.sdm_csp.decoupler_dim=0"], "model.sdm_csp.decoupler_dim"),
    (["model.decoupler_dim=16"], "model.sdm_csp.decoupler_dim"),  # moved: the error says where to
    (["model.temperature=0"], "model.temperature"),
    (["model.blending.alpha_init=2"], "model.blending.alpha_init"),
    (["model.blending.beta_init=-0.5"], "model.blending.beta_init"),
    (["model.blending.lambda_prototype=-1"], "model.blending.lambda_prototype"),
    (["model.blending.topk=0"], "model.blending.topk"),
    (["model.blending.max_samples=0"], "model.blending.max_samples"),
    (["model.blending.prototype_every=0"], "model.blending.prototype_every"),
    (["model.blending.start_epoch=-1"], "model.blending.start_epoch"),
    (["model.method=coop", "model.blending.instance=true"], "model.blending"),
    (["model.transport.tau_nav=0"], "model.transport.tau_nav"),
    (["model.transport.rho=1.5"], "model.transport.rho"),
    (["model.transport.weight=-1"], "model.transport.weight"),
    (["model.method=zero_shot", "model.transport.enabled=true"], "model.transport"),
    (["model.method=taidpt", "model.taidpt.scale=0"], "model.taidpt.scale"),
    (["model.method=taidpt", "model.taidpt.image_spatial_scale=-40"], "model.taidpt.image_spatial_scale"),
    (["model.method=taidpt", "model.transport.enabled=true"], "model.transport"),
    (["model.method=positivecoop", "model.positivecoop.negative_std=0"], "model.positivecoop.negative_std"),
    # backbone
    (["backbone.spec=''"], "backbone.spec"),
    (["backbone.image_size=0"], "backbone.image_size"),
    (["backbone.spec=hf:openai/clip-vit-base-patch16", "backbone.attnpool_positional=false"],
     "backbone.attnpool_positional"),
    # the run
    (["name=''"], "name"),
    (["seed=-1"], "seed"),
    (["output_dir=runs/{nme}"], "output_dir"),
    (["device=tpu"], "device"),
    (["device=cuda:x"], "device"),
    (["device=cpu", "data.cache=true", "data.cache_device=cuda"], "data.cache_device"),
    (["init_from=''"], "init_from"),
]


@pytest.fixture
def nothing_loads(monkeypatch):
    """Loading a backbone or a dataset fails the test: the checks come before both."""
    import clipml.backbones
    import clipml.data.registry

    def refuse(*args, **kwargs):
        raise AssertionError("a backbone or dataset was loaded while the config was read")

    monkeypatch.setattr(clipml.backbones, "load_backbone", refuse)
    monkeypatch.setattr(clipml.data.registry, "load_split", refuse)


@pytest.mark.parametrize("overrides, key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_value_is_one_config_error_naming_its_key_when_read(overrides, key, nothing_loads):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_experiment(None, overrides)


@pytest.mark.parametrize("section, values, key", [
    ("optim", {"decoupler_lr_scale": 0}, "optim.decoupler_lr_scale"),
    ("model", {"blending": {"contrastive_weight": -1}}, "model.blending.contrastive_weight"),
    ("model", {"method": "taidpt", "taidpt": {"global_weight": 3}}, "model.taidpt.global_weight"),
])
def test_stored_config_with_a_bad_value_is_refused(section, values, key, nothing_loads):
    """The same checks hold for a config read back from plain data (a checkpoint's, a run's)."""
    data = config_to_dict(ExperimentConfig())
    if "method" in values:  # another method's stored config: its own section in place of the default's
        del data["model"][data["model"]["method"]]
    data[section].update(values)
    with pytest.raises(ConfigError, match=re.escape(key)):
        config_from_dict(ExperimentConfig, data, "checkpoint.safetensors")


@pytest.mark.parametrize("overrides", [
    [],
    ["optim.epochs=1", "optim.warmup_epochs=1", "loss.clip=0", "model.blending.alpha_init=1"],
    ["model.temperature=null", "optim.grad_clip=null", "data.known_ratio=1", "data.workers=0"],
    ["device=cuda:1", "data.cache=true", "data.cache_device=cuda"],  # the machine is checked at the run
    ["data.captions.source=synthetic", "data.captions.options={num_captions: 5, preset: coco_like}"],
    ["data.captions.source=caps.csv", "data.captions.options={limit: 5, column: text}"],
    ["model.method=sdm_csp", "model.blending.instance=true", "model.transport.enabled=true"],
])
def test_edge_values_that_make_sense_are_accepted(overrides, nothing_loads):
    load_experiment(None, overrides)
