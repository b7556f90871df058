"""Prompt learners, the semantic decoupler, heads and MultiLabelCLIP on tiny backbones."""

import pytest
import torch
import torch.nn.functional as F

from clipml.decoupler import CosineHead, SemanticDecoupler, dualcoop_aggregate
from clipml.errors import ConfigError
from clipml.methods import METHODS
from clipml.model import ModelConfig, MultiLabelCLIP
from clipml.prompts import ContextPrompts

CLASSES = ["cat", "dog", "dining table", "traffic light"]
SMALL = {"sdm_csp": {"decoupler_dim": 16}}  # a small decoupler (its own key)


def make_model(backbone, method, **kwargs):
    torch.manual_seed(0)
    return MultiLabelCLIP(backbone, CLASSES, ModelConfig.of(method=method, n_ctx=4, **SMALL.get(method, {}), **kwargs))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_trainable_parameter_count_matches_formula(tiny_backbones, method):
    backbone = tiny_backbones["open_clip_vit"]
    model = make_model(backbone, method)
    width = backbone.token_embedding(torch.zeros(1, 1, dtype=torch.long)).shape[-1]
    C, M, D, d = len(CLASSES), 4, backbone.embed_dim, 16
    expected = {
        "zero_shot": 0,
        "coop": M * width,
        "csc_global": C * M * width,
        "dualcoop": 2 * C * M * width,
        "positivecoop": C * M * width + C * backbone.embed_dim,
        "sdm_csp": C * M * width + D * d + D * d + d + 1,  # contexts + U + V (guide = D) + P
        "taidpt": 2 * M * width,  # a global and a local context, shared by all classes
    }[method]
    assert sum(p.numel() for p in model.trainable_parameters()) == expected
    # Nothing of the backbone is trainable, and the optimizer's parameters are exactly these.
    assert all(not p.requires_grad for p in backbone.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_class_specific_logit_independent_of_other_contexts(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    model = make_model(backbone, "sdm_csp")
    images = torch.randn(3, 3, backbone.image_size, backbone.image_size)
    with torch.no_grad():
        before = model(images).logits
        model.prompts.ctx[1].add_(torch.randn_like(model.prompts.ctx[1]))
        after = model(images).logits
    changed = (after - before).abs().amax(dim=0)
    assert changed[1] > 1e-4
    assert torch.all(changed[[0, 2, 3]] == 0)


def test_shared_context_changes_every_class(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    model = make_model(backbone, "coop")
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size)
    with torch.no_grad():
        before = model(images).logits
        model.prompts.ctx.add_(0.5)
        after = model(images).logits
    assert torch.all((after - before).abs().amax(dim=0) > 1e-5)


def test_context_prompts_with_words_reproduce_handcrafted_text(tiny_backbones):
    """Context initialised from 'a photo of a' equals the hand-written prompt's feature."""
    backbone = tiny_backbones["open_clip_vit"]
    prompts = ContextPrompts(backbone, CLASSES, n_ctx=4, class_specific=True, init="a photo of a")
    with torch.no_grad():
        ours = prompts()
        theirs = backbone.model.encode_text(backbone.tokenize([f"a photo of a {c}." for c in CLASSES]))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_ctx_init_longer_than_context_is_an_error(tiny_backbones):
    with pytest.raises(ConfigError, match="more than model.n_ctx"):
        ContextPrompts(tiny_backbones["open_clip_vit"], CLASSES, n_ctx=2, init="a photo of a")


def test_decoupler_attention_sums_to_one_and_finds_the_matching_location():
    torch.manual_seed(0)
    D, N = 8, 6
    decoupler = SemanticDecoupler(D, D, hidden_dim=D)
    with torch.no_grad():
        decoupler.U.weight.copy_(torch.eye(D))
        decoupler.V.weight.copy_(torch.eye(D))
        decoupler.P.weight.fill_(10.0)
        decoupler.P.bias.zero_()
    guidance = F.normalize(torch.randn(3, D), dim=-1) * 3
    dense = -guidance[0].repeat(1, N, 1) + 0.1 * torch.randn(1, N, D)
    dense[0, 4] = guidance[0]  # location 4 matches class 0's guidance exactly
    features, attention = decoupler(dense, guidance)
    torch.testing.assert_close(attention.sum(dim=-1), torch.ones(1, 3))
    assert attention[0, 0].argmax() == 4 and attention[0, 0, 4] > 0.99
    torch.testing.assert_close(features[0, 0], dense[0, 4], atol=0.05, rtol=0)
    # The features are the attention-weighted sums of the dense tokens.
    torch.testing.assert_close(features, torch.einsum("bcn,bnd->bcd", attention, dense))


def test_decoupler_class_chunks_do_not_change_results():
    torch.manual_seed(1)
    whole = SemanticDecoupler(8, 5, hidden_dim=4, class_chunk=100)
    chunked = SemanticDecoupler(8, 5, hidden_dim=4, class_chunk=3)
    chunked.load_state_dict(whole.state_dict())
    dense, guidance = torch.randn(2, 7, 8), torch.randn(10, 5)
    for a, b in zip(whole(dense, guidance), chunked(dense, guidance)):
        torch.testing.assert_close(a, b)


def test_decoupler_default_chunks_by_size_on_cpu(monkeypatch):
    import clipml.decoupler as decoupler

    torch.manual_seed(1)
    whole = SemanticDecoupler(8, 5, hidden_dim=4, class_chunk=100)
    automatic = SemanticDecoupler(8, 5, hidden_dim=4)
    automatic.load_state_dict(whole.state_dict())
    dense, guidance = torch.randn(2, 7, 8, requires_grad=True), torch.randn(10, 5)
    monkeypatch.setattr(decoupler, "CPU_CHUNK_ELEMENTS", 3 * 2 * 7 * 4)  # three classes of [B=2, N=7, d=4]
    assert automatic._chunk(torch.zeros(2, 7, 4)) == 3
    monkeypatch.setattr(decoupler, "CPU_CHUNK_ELEMENTS", 1)  # never under one class
    assert automatic._chunk(torch.zeros(2, 7, 4)) == 1
    expected = whole(dense, guidance)
    grad_whole = torch.autograd.grad(expected[0].square().sum(), dense)[0]
    got = automatic(dense, guidance)
    grad_auto = torch.autograd.grad(got[0].square().sum(), dense)[0]
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(grad_whole, grad_auto)


def test_zero_shot_equals_clip_cosine(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    model = make_model(backbone, "zero_shot")
    images = torch.randn(3, 3, backbone.image_size, backbone.image_size)
    with torch.no_grad():
        logits = model(images).logits
        image = F.normalize(backbone.model.encode_image(images), dim=-1)
        text = F.normalize(backbone.model.encode_text(backbone.tokenize([f"a photo of a {c}." for c in CLASSES])), dim=-1)
    torch.testing.assert_close(logits, 100 * image @ text.T, rtol=1e-4, atol=1e-4)


def test_template_ensemble_is_mean_of_normalised_features(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    templates = ["a photo of a {}.", "a drawing of the {}."]
    model = make_model(backbone, "zero_shot", templates=templates)
    with torch.no_grad():
        parts = [F.normalize(backbone.encode_text([t.format(c) for c in CLASSES]), dim=-1) for t in templates]
    torch.testing.assert_close(model.text_features(), F.normalize(parts[0] + parts[1], dim=-1))


def test_dualcoop_aggregation_hand_computed():
    dense = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # two locations
    positive = torch.tensor([[1.0, 0.0]])
    negative = torch.tensor([[0.0, 1.0]])
    logits, attention = dualcoop_aggregate(dense, positive, negative)
    a = torch.softmax(torch.tensor([20.0, 0.0]), dim=0)
    expected = 5 * (a[0] * 20 + a[1] * 0) - 5 * (a[0] * 0 + a[1] * 20)
    torch.testing.assert_close(logits, expected.view(1, 1))
    torch.testing.assert_close(attention[0, 0], a)


def test_cosine_head_scales_cosine():
    head = CosineHead(temperature=10.0)
    features = torch.tensor([[[2.0, 0.0], [1.0, 1.0]]])
    text = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    torch.testing.assert_close(head(features, text), torch.tensor([[10.0, 10 / 2 ** 0.5]]))


def test_guidance_options(tiny_backbones, tmp_path):
    import numpy as np

    backbone = tiny_backbones["open_clip_vit"]
    vectors = tmp_path / "words.npy"
    np.save(vectors, np.random.randn(len(CLASSES), 12).astype(np.float32))
    model = make_model(backbone, "sdm_csp", guidance=str(vectors))
    assert model.decoupler.V.in_features == 12
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size)
    assert model(images).logits.shape == (2, len(CLASSES))
    learned = make_model(backbone, "sdm_csp", guidance="learned")
    output = learned(images)
    assert output.attention.shape == (2, len(CLASSES), 16)
    # Learned guidance follows each class's own prompt, detached: the attention moves with the
    # class's context, but no gradient reaches the prompts through the attention.
    (output.attention * torch.randn_like(output.attention)).sum().backward()
    assert learned.prompts.ctx.grad is None or learned.prompts.ctx.grad.abs().sum() == 0
    assert learned.decoupler.V.weight.grad.abs().sum() > 0
    with torch.no_grad():
        learned.prompts.ctx[1].add_(torch.randn_like(learned.prompts.ctx[1]))
        moved = (learned(images).attention - output.attention).abs().amax(dim=(0, 2))
    assert moved[1] > 1e-6 and torch.all(moved[[0, 2, 3]] == 0)
    np.save(vectors, np.zeros((len(CLASSES) + 1, 12), dtype=np.float32))
    with pytest.raises(ConfigError, match="expected word vectors of shape"):
        make_model(backbone, "sdm_csp", guidance=str(vectors))


@pytest.mark.parametrize("family", ["open_clip_rn", "hf_vit"])
def test_every_family_trains_a_step(tiny_backbones, family):
    backbone = tiny_backbones[family]
    model = make_model(backbone, "sdm_csp")
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size)
    output = model(images)
    output.logits.sum().backward()
    assert model.prompts.ctx.grad.abs().sum() > 0
    assert model.decoupler.U.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_logit_bias_is_one_learned_scalar_added_to_every_logit(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    plain = make_model(backbone, "csc_global")
    biased = make_model(backbone, "csc_global", logit_bias=-25.0)
    assert (sum(p.numel() for p in biased.trainable_parameters())
            == sum(p.numel() for p in plain.trainable_parameters()) + 1)
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size)
    with torch.no_grad():
        torch.testing.assert_close(biased(images).logits, plain(images).logits - 25.0)
    assert make_model(backbone, "zero_shot", logit_bias=-25.0).trainable_parameters() == []
    # DualCoOp's S+ − S− takes no bias: no parameter that would sit unused (and stall DDP).
    dual, dual_biased = make_model(backbone, "dualcoop"), make_model(backbone, "dualcoop", logit_bias=-25.0)
    assert [p.shape for p in dual_biased.trainable_parameters()] == [p.shape for p in dual.trainable_parameters()]


def test_dualcoop_negative_context_has_its_own_init(tiny_backbones):
    """With n_ctx equal to the init words, one init for both prompts makes them equal and every
    logit S+ - S- exactly 0; the negative context gets its own init (random by default)."""
    backbone = tiny_backbones["open_clip_vit"]
    images = torch.randn(3, 3, backbone.image_size, backbone.image_size)
    words = "a photo of a"  # 4 tokens = n_ctx of make_model
    with torch.no_grad():
        equal = make_model(backbone, "dualcoop", ctx_init=words, negative_ctx_init=words)
        assert torch.equal(equal.prompts.positive.ctx, equal.prompts.negative.ctx)
        assert torch.all(equal(images).logits == 0)
        default = make_model(backbone, "dualcoop", ctx_init=words)
        assert torch.equal(default.prompts.positive.ctx, equal.prompts.positive.ctx)
        assert not torch.allclose(default.prompts.negative.ctx, default.prompts.positive.ctx)
        assert default.prompts.negative.ctx.std() < 0.05  # N(0, 0.02): DualCoOp's random init
        assert default(images).logits.abs().min() > 0
        own = make_model(backbone, "dualcoop", ctx_init=words, negative_ctx_init="a picture of a")
        expected = backbone.token_embedding(backbone.tokenize(["a picture of a"]))[0, 1:5]
        torch.testing.assert_close(own.prompts.negative.ctx[2], expected)


def test_uniform_decoupler_init_starts_from_the_mean_token_and_still_learns(tiny_backbones):
    backbone = tiny_backbones["open_clip_vit"]
    model = make_model(backbone, "sdm_csp", decoupler_init="uniform")
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size)
    dense = model.encode(images)
    output = model.forward_dense(dense)
    N = dense.tokens.shape[1]
    torch.testing.assert_close(output.attention, torch.full_like(output.attention, 1.0 / N))
    expected = dense.tokens.mean(dim=1, keepdim=True).expand_as(output.features)
    torch.testing.assert_close(output.features, expected)
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=1.0)
    for _ in range(2):  # P moves in the first step, U and V from the second
        optimizer.zero_grad()
        loss = model.forward_dense(dense).logits.logsumexp(dim=1).sum()
        loss.backward()
        optimizer.step()
    assert model.decoupler.U.weight.grad.abs().sum() > 0 and model.decoupler.V.weight.grad.abs().sum() > 0
    assert model.forward_dense(dense).attention.std() > 0
    default = make_model(backbone, "sdm_csp")
    assert default.forward_dense(dense).attention.std() > 0  # the paper's random init is kept by default


def test_decoupler_lr_scale_gives_the_decoupler_its_own_rate(tiny_backbones):
    from clipml.engine.train import build_optimizer, cosine_with_warmup
    from clipml.experiment import OptimConfig

    model = make_model(tiny_backbones["open_clip_vit"], "sdm_csp", learn_temperature=True)
    decoupler = {id(p) for p in model.decoupler.parameters()}
    optimizer = build_optimizer(OptimConfig(name="adamw", lr=0.01, decoupler_lr_scale=0.1), model)
    rates = {id(p): (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for p in group["params"]}
    assert set(rates) == {id(p) for p in model.trainable_parameters()}
    for parameter in model.trainable_parameters():
        lr, decay = rates[id(parameter)]
        assert lr == pytest.approx(0.001 if id(parameter) in decoupler else 0.01)
        assert decay == (0.0 if parameter.dim() == 0 else 5e-4)
    # The schedule scales each group from its own peak (first warm-up step: half of it).
    cosine_with_warmup(optimizer, warmup_steps=2, total_steps=10)
    assert sorted({round(g["lr"], 6) for g in optimizer.param_groups}) == [0.0005, 0.005]
    # One rate for all keeps the two groups an older run's saved optimizer state expects.
    plain = build_optimizer(OptimConfig(name="adamw", lr=0.01), model)
    assert [len(g["params"]) for g in plain.param_groups] == [len(model.trainable_parameters()) - 1, 1]
    with pytest.raises(ConfigError, match="decoupler_lr_scale"):
        build_optimizer(OptimConfig(decoupler_lr_scale=0.0), model)
