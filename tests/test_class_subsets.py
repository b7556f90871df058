"""Training on the batch's known classes alone (optim.train_classes=known) gives the full pass's
gradients, parameter by parameter; class sampling keeps every known class; evaluation encodes the
text once and scores the same in class chunks as at once."""

import numpy as np
import pytest
import torch

from clipml.backbones import Dense
from clipml.data.base import MultiLabelSplit
from clipml.engine.classes import ClassSelector, known_classes, sampled_classes, score_in_chunks
from clipml.engine.evaluate import evaluate
from clipml.engine.train import build_optimizer, build_scheduler, training_loss
from clipml.errors import ConfigError
from clipml.experiment import EvalConfig, ExperimentConfig, OptimConfig
from clipml.losses import build_loss
from clipml.methods import METHODS, Step
from clipml.methods.terms import class_subset_obstacle
from clipml.model import ModelConfig, MultiLabelCLIP

CLASSES = [f"class {name}" for name in "abcdefghijkl"]  # 12 classes
ABSENT = [2, 5, 9]  # no known entry in the batch below


def batch_labels(batch=4, seed=0):
    """1/0/-1 labels [B, 12] where classes ABSENT are unknown in every row and each row has
    unknown entries among the others too."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, 2, (batch, len(CLASSES)), generator=generator, dtype=torch.int8)
    labels[0, [0, 1]] = torch.tensor([1, 0], dtype=torch.int8)  # a positive and a negative, whatever the draw
    labels[1, [0, 1]] = torch.tensor([1, 1], dtype=torch.int8)
    labels[:, ABSENT] = -1
    return labels


def random_dense(backbone, batch=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    h, w = backbone.grid
    return Dense(torch.randn(batch, h * w, backbone.embed_dim, generator=generator),
                 torch.randn(batch, backbone.embed_dim, generator=generator), (h, w))


def gradients(model, loss_fn, dense, labels, classes):
    model.zero_grad(set_to_none=True)
    step = Step(epoch=0, batch=1, batches=4, generator=torch.Generator().manual_seed(3))
    training_loss(model, loss_fn, dense, labels, step, classes).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


# (method, model settings, loss, backbone family): every method that trains, with each training term
# that keeps classes apart, and each loss.
CASES = [
    ("coop", {}, "bce", "open_clip_vit"),
    ("csc_global", {}, "asl", "open_clip_vit"),
    ("csc_global", {"logit_bias": -2.0, "learn_temperature": True}, "bce", "open_clip_vit"),
    ("dualcoop", {}, "asl", "open_clip_vit"),
    ("dualcoop", {"class_specific": False}, "bce", "open_clip_vit"),
    ("dualcoop", {"mean_token": True}, "asl", "open_clip_rn"),
    ("positivecoop", {"positive_offset": True}, "asl", "open_clip_vit"),
    ("sdm_csp", {"decoupler_dim": 8}, "asl", "open_clip_vit"),
    ("sdm_csp", {"decoupler_dim": 8, "guidance": "learned"}, "bce", "open_clip_vit"),
    ("sdm_csp", {"decoupler_dim": 8, "blending": {"instance": True, "contrastive_weight": 0.05, "start_epoch": 0},
                 "transport": {"enabled": True, "background": True}}, "asl", "open_clip_vit"),
    ("sdm_csp", {"decoupler_dim": 8, "blending": {"instance": True, "contrastive_weight": 0.05, "start_epoch": 0,
                                                  "contrastive_form": "mined", "contrastive_schedule": "from_start"}},
     "bce", "open_clip_vit"),
    ("taidpt", {}, "ranking", "open_clip_vit"),
]


def model_config(method, settings):
    settings = dict(settings)
    blending = settings.pop("blending", {})
    transport = settings.pop("transport", {})
    from clipml.methods import BlendingConfig, TransportConfig

    return ModelConfig.of(method=method, n_ctx=3, blending=BlendingConfig(**blending),
                          transport=TransportConfig(**transport), **settings)


def check_identical_gradients(backbone, method, settings, loss, rtol, atol):
    config = model_config(method, settings)
    assert class_subset_obstacle(config) is None
    torch.manual_seed(0)
    model = MultiLabelCLIP(backbone, CLASSES, config)
    loss_fn = build_loss(loss, reduction="sum" if loss == "asl" else "mean")
    dense, labels = random_dense(backbone), batch_labels()
    classes = known_classes(labels)
    assert classes.tolist() == [c for c in range(len(CLASSES)) if c not in ABSENT]

    full = gradients(model, loss_fn, dense, labels, None)
    subset = gradients(model, loss_fn, dense, labels, classes)
    assert full.keys() == subset.keys() and sum(float(g.abs().sum()) for g in full.values()) > 0
    scale = max(float(g.abs().max()) for g in full.values())
    for name, grad in full.items():
        torch.testing.assert_close(subset[name], grad, rtol=rtol, atol=atol * scale,
                                   msg=lambda text: f"{name}: {text}")
        if grad.dim() >= 2 and grad.shape[0] == len(CLASSES):  # one row per class (class-specific contexts)
            for part in (grad, subset[name]):
                assert (part[ABSENT] == 0).all(), name  # a class absent from the batch learns nothing
                assert (part[classes].flatten(1).abs().sum(dim=1) > 0).all(), name


@pytest.mark.parametrize("method, settings, loss, family", CASES,
                         ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_known_classes_give_the_full_pass_gradients(tiny_backbones, method, settings, loss, family):
    """The text tower's batched products round differently for 9 prompts and for 12, so the two
    passes agree to float32 precision (entries within 1e-4 relative, or 1e-5 of the largest
    gradient entry, which a partial loss's summed gradients reach), not bit for bit."""
    check_identical_gradients(tiny_backbones[family], method, settings, loss, rtol=1e-4, atol=1e-5)


def test_the_subset_encodes_only_the_known_classes_prompts(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    model = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method="dualcoop", n_ctx=3))
    rows = []
    original = backbone.encode_embeddings
    try:
        backbone.encode_embeddings = lambda embeddings, ids: rows.append(len(ids)) or original(embeddings, ids)
        labels = batch_labels()
        training_loss(model, build_loss("asl"), random_dense(backbone), labels, None, known_classes(labels))
    finally:
        del backbone.encode_embeddings
    assert rows == [len(CLASSES) - len(ABSENT)] * 2  # the positive and the negative prompts


def test_pprb_and_undeclared_methods_cannot_take_the_shortcut(tiny_backbones):
    pprb = model_config("sdm_csp", {"blending": {"prototype": True}})
    assert "PPRB" in class_subset_obstacle(pprb)
    with pytest.raises(ConfigError, match="optim.train_classes=known .*PPRB"):
        ExperimentConfig(model=pprb, optim=OptimConfig(train_classes="known"))
    # auto: every class under PPRB, the known ones otherwise
    model = MultiLabelCLIP(tiny_backbones["open_clip_vit"], CLASSES, pprb)
    assert ClassSelector(OptimConfig(), model, seed=0)(batch_labels()) is None
    plain = MultiLabelCLIP(tiny_backbones["open_clip_vit"], CLASSES, ModelConfig.of(method="csc_global", n_ctx=3))
    assert ClassSelector(OptimConfig(), plain, seed=0)(batch_labels()).tolist() == known_classes(batch_labels()).tolist()
    assert ClassSelector(OptimConfig(train_classes="all"), plain, seed=0)(batch_labels()) is None
    with pytest.raises(ConfigError, match="optim.sampled_classes=4 .* optim.train_classes='all'"):
        OptimConfig(train_classes="all", sampled_classes=4)


def test_a_method_that_does_not_declare_class_subsets_is_refused(monkeypatch, tiny_backbones):
    monkeypatch.setattr(METHODS["csc_global"], "class_subsets", False)
    config = ModelConfig.of(method="csc_global", n_ctx=3)
    assert "does not score classes separately" in class_subset_obstacle(config)
    for optim, evaluation, key in ((OptimConfig(train_classes="known"), EvalConfig(), "optim.train_classes"),
                                   (OptimConfig(sampled_classes=5), EvalConfig(), "optim.sampled_classes"),
                                   (OptimConfig(), EvalConfig(class_chunk=4), "eval.class_chunk")):
        with pytest.raises(ConfigError, match=key):
            ExperimentConfig(model=config, optim=optim, eval=evaluation)
    model = MultiLabelCLIP(tiny_backbones["open_clip_vit"], CLASSES, config)
    with pytest.raises(ConfigError, match="cannot score a subset"):
        model.forward_dense(random_dense(tiny_backbones["open_clip_vit"]), classes=torch.tensor([0, 1]))


def test_pprb_on_sampled_classes_blends_each_class_with_its_own_prototypes(tiny_backbones):
    """PPRB on a sampled subset draws its unknown classes from the subset. Where every class with a
    prototype is in the subset, in one quadrant each, and topk covers them all, nothing is left
    to chance: the step gives the full pass's gradients. Reading prototypes or their validity by
    position in the subset (which skips classes) instead of by class id breaks this."""
    backbone = tiny_backbones["open_clip_vit"]
    config = model_config("sdm_csp", {"decoupler_dim": 8,
                                      "blending": {"prototype": True, "start_epoch": 0, "topk": len(CLASSES)}})
    torch.manual_seed(0)
    model = MultiLabelCLIP(backbone, CLASSES, config)
    labels = batch_labels()
    classes = ClassSelector(OptimConfig(sampled_classes=10), model, seed=0)(labels)
    assert len(classes) == 10 and classes.tolist() != list(range(10))  # not a prefix: ids differ from positions
    generator = torch.Generator().manual_seed(5)
    blending = model.blending
    blending.prototypes.copy_(torch.randn(blending.prototypes.shape, generator=generator))
    valid = torch.zeros_like(blending.prototype_valid)
    valid[classes, torch.randint(0, 4, (len(classes),), generator=generator)] = True
    blending.prototype_valid.copy_(valid)
    loss_fn = build_loss("asl", reduction="sum")
    dense = random_dense(backbone)
    full = gradients(model, loss_fn, dense, labels, None)
    subset = gradients(model, loss_fn, dense, labels, classes)
    assert float(full["blending.beta"].abs()) > 0  # PPRB blended some entries
    scale = max(float(g.abs().max()) for g in full.values())
    for name, grad in full.items():
        torch.testing.assert_close(subset[name], grad, rtol=1e-4, atol=1e-5 * scale,
                                   msg=lambda text: f"{name}: {text}")


def train_steps(model, optimizer_name, batches, select_classes, skip_empty=False):
    """The trainer's steps (AdamW or SGD with momentum, weight decay, the schedule) over `batches`
    (dense, labels); `skip_empty`: no optimizer step for a batch without a known label. Returns the
    final weights."""
    optim = OptimConfig(name=optimizer_name, lr=0.01, momentum=0.9, weight_decay=0.05, epochs=1, warmup_epochs=0)
    optimizer = build_optimizer(optim, model)
    scheduler = build_scheduler(optim, optimizer, len(batches))
    loss_fn = build_loss("asl", reduction="sum")
    for index, (dense, labels) in enumerate(batches):
        if skip_empty and (labels == -1).all():
            continue
        step = Step(epoch=0, batch=index, batches=len(batches), generator=torch.Generator().manual_seed(index))
        loss = training_loss(model, loss_fn, dense, labels, step, select_classes(labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


# sdm_csp under SGD: its decoupler.P.bias (before a softmax over locations) has a zero gradient up
# to rounding, which AdamW scales into lr-sized steps of either sign, whichever classes are encoded.
@pytest.mark.parametrize("method, settings, family, optimizer", [
    ("csc_global", {}, "hf_vit", "adamw"),
    ("dualcoop", {}, "open_clip_vit", "adamw"),
    ("dualcoop", {}, "open_clip_vit", "sgd"),
    ("sdm_csp", {"decoupler_dim": 8, "blending": {"instance": True, "contrastive_weight": 0.05, "start_epoch": 0},
                 "transport": {"enabled": True, "background": True}}, "open_clip_vit", "sgd"),
])
def test_a_batch_without_known_labels_steps_as_the_full_pass(tiny_backbones, method, settings, family, optimizer):
    """Such a batch has no class to encode under train_classes=known (a crash on 0 prompts before).
    The full pass takes an optimizer step on zero gradients, which moves the weights (momentum,
    weight decay): the subset steps must give the same weights, which skipping that step does not."""
    backbone = tiny_backbones[family]
    unknown = torch.full((4, len(CLASSES)), -1, dtype=torch.int8)
    batches = [(random_dense(backbone, seed=1), batch_labels(seed=0)), (random_dense(backbone, seed=2), unknown),
               (random_dense(backbone, seed=3), batch_labels(seed=1))]
    weights = {}
    for choice, skip in (("all", False), ("known", False), ("skipped", True)):
        torch.manual_seed(0)
        model = MultiLabelCLIP(backbone, CLASSES, model_config(method, settings))
        selector = ClassSelector(OptimConfig(train_classes="all" if choice == "all" else "known"), model, seed=0)
        weights[choice] = train_steps(model, optimizer, batches, selector, skip)
    assert len(known_classes(unknown)) == 0
    for name, full in weights["all"].items():
        torch.testing.assert_close(weights["known"][name], full, rtol=1e-4, atol=1e-5,
                                   msg=lambda text: f"{name}: {text}")
    assert max(float((weights["skipped"][name] - full).abs().max()) for name, full in weights["all"].items()) > 1e-3


def test_sampled_classes_keep_every_known_class_and_fill_up_to_k():
    labels = batch_labels()
    known = set(known_classes(labels).tolist())
    draws = [sampled_classes(labels, 11, torch.Generator().manual_seed(seed)).tolist() for seed in range(20)]
    for drawn in draws:
        assert len(drawn) == 11 and known <= set(drawn) and drawn == sorted(drawn)
    assert len({tuple(d) for d in draws}) == len(ABSENT)  # each absent class left out in turn
    assert sampled_classes(labels, 3, torch.Generator()).tolist() == sorted(known)  # never fewer than known
    assert sampled_classes(labels, 50, torch.Generator()).tolist() == list(range(len(CLASSES)))


def test_class_draws_depend_on_the_epoch_alone(tiny_backbones):
    """Each epoch's draws come from (seed, epoch): the same after any earlier draws (a resumed run),
    different between epochs and seeds."""
    model = MultiLabelCLIP(tiny_backbones["open_clip_vit"], CLASSES, ModelConfig.of(method="csc_global", n_ctx=3))
    labels = batch_labels()

    def draws(seed, epoch, before=0):
        selector = ClassSelector(OptimConfig(sampled_classes=10), model, seed=seed)
        for _ in range(before):
            selector(labels)
        selector.on_epoch_start(epoch)
        return [tuple(selector(labels).tolist()) for _ in range(8)]

    assert draws(0, 2) == draws(0, 2, before=5)
    assert draws(0, 2) != draws(0, 3) and draws(0, 2) != draws(1, 2)


class DenseSource:
    """Dense features in batches, as the trainer's and evaluation's sources give them."""

    def __init__(self, backbone, batches=3, batch=4):
        labels = np.concatenate([batch_labels(batch, seed).numpy() for seed in range(batches)])
        labels[:, ABSENT] = np.random.RandomState(0).randint(0, 2, (len(labels), len(ABSENT)))
        labels[0] = 1
        labels[1] = 0
        self.split = MultiLabelSplit("painted", "test", CLASSES, [f"{i}.jpg" for i in range(len(labels))], labels)
        self.dense = [random_dense(backbone, batch, seed) for seed in range(batches)]
        self.batch = batch

    def __len__(self):
        return len(self.dense)

    def batches(self, seed=None, sharded=True):
        for i, dense in enumerate(self.dense):
            index = torch.arange(i * self.batch, (i + 1) * self.batch)
            yield dense, torch.as_tensor(self.split.labels[index.numpy()]), index


@pytest.mark.parametrize("method, prompt_sets", [("csc_global", 1), ("dualcoop", 2), ("sdm_csp", 1)])
def test_evaluation_encodes_the_text_once_and_scores_the_same_in_class_chunks(tiny_backbones, method, prompt_sets):
    backbone = tiny_backbones["open_clip_vit"]
    torch.manual_seed(0)
    model = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method=method, n_ctx=3, **(
        {"decoupler_dim": 8, "guidance": "learned"} if method == "sdm_csp" else {})))
    source = DenseSource(backbone)
    calls = []
    original = backbone.encode_embeddings
    results = {}
    try:
        backbone.encode_embeddings = lambda embeddings, ids: calls.append(len(ids)) or original(embeddings, ids)
        for chunk in (0, 5):
            calls.clear()
            results[chunk] = evaluate(model, source, settings=EvalConfig(class_chunk=chunk))
            assert calls == [len(CLASSES)] * prompt_sets  # once per evaluation, whatever the batches and chunks
    finally:
        del backbone.encode_embeddings
    np.testing.assert_allclose(results[5]["AP"], results[0]["AP"], rtol=1e-9)
    if method != "csc_global":  # spatial methods: the attention maps are chunked too
        assert results[5]["class_map_correlation"] == pytest.approx(results[0]["class_map_correlation"], rel=1e-5)


@pytest.mark.parametrize("method, settings", [("sdm_csp", {"decoupler_dim": 8}), ("dualcoop", {}),
                                              ("positivecoop", {"positive_offset": True}), ("taidpt", {}),
                                              ("zero_shot", {"scoring": "dense"}), ("coop", {})])
def test_class_chunks_give_the_same_logits_and_attention(tiny_backbones, method, settings):
    backbone = tiny_backbones["open_clip_vit"]
    torch.manual_seed(0)
    model = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method=method, **settings))
    dense = random_dense(backbone, batch=3)
    with torch.no_grad():
        text = model.text_features()
        whole = model.forward_dense(dense, text)
        for chunk in (0, 1, 5, 12):
            seen = []
            logits = score_in_chunks(model, dense, text, chunk, lambda classes, maps: seen.append((classes, maps)))
            torch.testing.assert_close(logits, whole.logits, rtol=1e-5, atol=1e-5)
            if whole.attention is None:
                assert not seen
                continue
            sizes = [len(classes) for classes, _ in seen]  # the last chunk may be short
            assert sizes == [min(chunk or len(CLASSES), len(CLASSES) - start)
                             for start in range(0, len(CLASSES), chunk or len(CLASSES))]
            torch.testing.assert_close(torch.cat([classes for classes, _ in seen]), torch.arange(len(CLASSES)))
            torch.testing.assert_close(torch.cat([maps for _, maps in seen], dim=1), whole.attention,
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["csc_global", "dualcoop"])
def test_decision_thresholds_read_the_known_validation_entries_only(tiny_backbones, monkeypatch, method):
    """Issue #27: thresholds and calibration chosen from the known entries of a partially labelled
    validation split, in class chunks, without its [N, C] logits, are those of the dense logits."""
    from clipml.engine import evaluate as evaluation
    from clipml.ensemble import fit_calibration
    from clipml.metrics import f1_thresholds

    backbone = tiny_backbones["open_clip_vit"]
    torch.manual_seed(0)
    model = MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method=method, n_ctx=3))
    source = DenseSource(backbone)
    logits, labels = evaluation.predict(model, source)
    assert (labels == -1).any()
    per_class, global_threshold, fallback = f1_thresholds(logits, labels, min_positives=2)
    calibration = fit_calibration(logits, labels)
    scoring = evaluation._score
    dense_asked = []
    monkeypatch.setattr(evaluation, "_score", lambda *a, **k: dense_asked.append(k.get("dense")) or scoring(*a, **k))
    for chunk, rel in ((0, 0), (5, 1e-5)):
        stored = evaluation.decision_thresholds(model, source, settings=EvalConfig(
            class_chunk=chunk, threshold_min_positives=2, threshold_floor=0.0))
        assert stored["fallback"] == [name for name, used in zip(CLASSES, fallback) if used]
        assert stored["global"] == pytest.approx(global_threshold, rel=rel)
        assert stored["per_class"] == pytest.approx(
            {name: value for name, value, used in zip(CLASSES, per_class, fallback) if not used}, rel=rel)
        if calibration.scale > 0:
            assert stored["calibration"] == pytest.approx({"scale": calibration.scale, "bias": calibration.bias},
                                                          rel=rel or 1e-12)
        else:  # a random model's logits can rank against the labels: no calibration, on either path
            assert stored["calibration"] is None
    assert dense_asked == [None, None]  # never the [N, C] logits


def test_class_chunk_is_not_part_of_the_experiment():
    from clipml.experiment import RUN_ONLY_KEYS

    assert "eval.class_chunk" in RUN_ONLY_KEYS
    with pytest.raises(ConfigError, match="eval.class_chunk"):
        EvalConfig(class_chunk=-1)


@pytest.mark.integration
def test_training_runs_on_the_known_classes_and_learns_as_the_full_pass(tmp_path, monkeypatch):
    from clipml.config import load_config
    from clipml.engine import train as trainer
    from conftest import TINY_RUN

    seen = []

    def recording(model, loss_fn, dense, labels, step=None, classes=None):
        seen.append((classes, known_classes(labels)))
        return training_loss(model, loss_fn, dense, labels, step, classes)

    monkeypatch.setattr(trainer, "training_loss", recording)
    runs = {}
    for choice in ("all", "auto"):
        seen.clear()
        cfg = load_config(ExperimentConfig, None, [
            *(o for o in TINY_RUN if not o.startswith("model.sdm_csp.")), "model.method=csc_global",
            "train.report=false", "train.tensorboard=false", "data.options={num_images: 100}", "data.known_ratio=0.15",
            "data.batch_size=4", f"data.mask_dir={tmp_path / 'masks'}", "data.val_fraction=0.25", "optim.epochs=1",
            f"output_dir={tmp_path / 'runs' / '{name}'}", f"name={choice}", f"optim.train_classes={choice}"])
        runs[choice] = trainer.train(cfg, resume=False)
        subsets = [classes for classes, _ in seen]
        if choice == "all":
            assert all(classes is None for classes in subsets)
        else:
            assert all(classes.tolist() == known.tolist() for classes, known in seen)
            assert sum(len(classes) for classes in subsets) < len(subsets) * len(runs["all"]["test_ap"])
    assert runs["auto"]["history"][0]["loss"] == pytest.approx(runs["all"]["history"][0]["loss"], rel=1e-5)
    assert runs["auto"]["val"]["mAP"] == pytest.approx(runs["all"]["val"]["mAP"], abs=1e-3)
