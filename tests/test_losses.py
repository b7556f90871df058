import math

import pytest
import torch
import torch.nn.functional as F

from clipml.errors import ConfigError
from clipml.losses import build_loss, partial_asl, partial_bce



# Exact comparisons with hand-computed and brute-force floats.
pytestmark = pytest.mark.usefixtures("float64")


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def hand_asl_entry(x, y, gp, gn, clip):
    """One entry of ASL written from the formula with plain floats."""
    p = sig(x)
    pm = max(p - clip, 0.0)
    return -(y * (1 - p) ** gp * math.log(p) + (1 - y) * pm**gn * math.log(1 - pm))


def batch(seed=0, b=4, c=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, generator=g) * 3
    targets = (torch.rand(b, c, generator=g) < 0.4).double()
    known = torch.rand(b, c, generator=g) < 0.6
    known[0, 0] = True
    return logits, targets, known


# ---------------------------------------------------------------- hand-computed values


def test_bce_hand_computed():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    known = torch.tensor([[True, True], [False, True]])
    expected = (-math.log(sig(2.0)) - math.log(1 - sig(-1.0)) - math.log(sig(3.0))) / 3
    assert partial_bce(logits, targets, known).item() == pytest.approx(expected, rel=1e-12)
    assert partial_bce(logits, targets, known, reduction="sum").item() == pytest.approx(
        3 * expected, rel=1e-12
    )


def test_asl_hand_computed():
    logits = torch.tensor([[2.0, -1.0, 0.3], [0.5, -3.0, 1.5]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.7]])
    known = torch.tensor([[True, True, True], [False, True, True]])
    entries = [
        hand_asl_entry(2.0, 1, 1, 4, 0.05),
        hand_asl_entry(-1.0, 0, 1, 4, 0.05),
        hand_asl_entry(0.3, 0, 1, 4, 0.05),
        hand_asl_entry(-3.0, 1, 1, 4, 0.05),
        hand_asl_entry(1.5, 0.7, 1, 4, 0.05),  # soft target: both terms, own weights
    ]
    got_sum = partial_asl(logits, targets, known, reduction="sum").item()
    got_mean = partial_asl(logits, targets, known).item()
    assert got_sum == pytest.approx(sum(entries), rel=1e-10)
    assert got_mean == pytest.approx(sum(entries) / 5, rel=1e-10)


def test_asl_other_gammas_and_clip_below_threshold():
    # p = sig(-4) = 0.018 < clip = 0.05: p_m = 0, the negative entry costs exactly nothing.
    logits = torch.tensor([[-4.0, 0.8]])
    targets = torch.tensor([[0.0, 1.0]])
    known = torch.ones(1, 2, dtype=torch.bool)
    got = partial_asl(logits, targets, known, gamma_pos=2, gamma_neg=3, clip=0.05, reduction="sum")
    assert got.item() == pytest.approx(hand_asl_entry(0.8, 1, 2, 3, 0.05), rel=1e-10)
    assert hand_asl_entry(-4.0, 0, 2, 3, 0.05) == 0.0


def test_asl_eps_floors_log_probability():
    # p = sig(-30) ~ 9e-14 < eps: the reference clamps p at eps, so the loss is -log(eps).
    logits, targets, known = torch.tensor([[-30.0]]), torch.ones(1, 1), torch.ones(1, 1, dtype=bool)
    w = 1 - sig(-30.0)
    assert partial_asl(logits, targets, known, eps=1e-6).item() == pytest.approx(
        -w * math.log(1e-6), rel=1e-9
    )
    assert partial_asl(logits, targets, known, eps=0).item() == pytest.approx(w * 30.0, rel=1e-9)


def test_asl_on_the_score_difference_is_dualcoops_two_way_softmax_asl():
    """DualCoOp's loss (ASL on softmax over (S-, S+)) is ASL on the logit S+ - S-, which is how
    clipml trains it (loss.name=asl on dualcoop's logits)."""
    pos = torch.tensor([[3.0, -0.5]])
    neg = torch.tensor([[1.0, 0.7]])
    targets = torch.tensor([[1.0, 0.0]])
    known = torch.ones(1, 2, dtype=torch.bool)
    # Two-way softmax over (S-, S+) written out: p = e^{S+} / (e^{S+} + e^{S-}).
    def p2(sp, sn):
        return math.exp(sp) / (math.exp(sp) + math.exp(sn))

    p_a, p_b = p2(3.0, 1.0), p2(-0.5, 0.7)
    pm_b = max(p_b - 0.05, 0)
    expected = -(1 - p_a) * math.log(p_a) - pm_b**2 * math.log(1 - pm_b)
    got = partial_asl(pos - neg, targets, known, gamma_pos=1, gamma_neg=2, reduction="sum")
    assert got.item() == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------- unknown entries


def _loss_and_grad(fn, logits, targets, known, **kw):
    logits = logits.clone().requires_grad_(True)
    loss = fn(logits, targets, known, **kw)
    loss.backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize(
    "fn, kw",
    [(partial_bce, {}), (partial_asl, {}), (partial_asl, {"eps": 0, "clip": 0, "gamma_neg": 0.5})],
)
@pytest.mark.parametrize("extreme", [float("inf"), float("-inf"), 1e30, -1e30])
def test_unknown_entries_have_no_effect(fn, kw, extreme):
    logits, targets, known = batch()
    loss_a, grad_a = _loss_and_grad(fn, logits, targets, known, **kw)
    logits_b = torch.where(known, logits, torch.full_like(logits, extreme))
    targets_b = torch.where(known, targets, torch.full_like(targets, float("nan")))
    loss_b, grad_b = _loss_and_grad(fn, logits_b, targets_b, known, **kw)
    assert torch.isfinite(loss_b)
    assert loss_b.item() == loss_a.item()
    assert torch.equal(grad_a, grad_b)
    assert torch.all(grad_b[~known] == 0)
    assert grad_b[known].abs().sum() > 0  # (ASL negatives with p < clip get exactly 0)


@pytest.mark.parametrize("fn", [partial_bce, partial_asl])
def test_no_known_entry_gives_zero_with_graph(fn):
    logits = torch.randn(3, 4, requires_grad=True)
    known = torch.zeros(3, 4, dtype=torch.bool)
    loss = fn(logits, torch.ones(3, 4), known)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(logits.grad == 0)


# ---------------------------------------------------------------- oracles and identities


def test_bce_matches_torch_on_known_subset():
    logits, targets, known = batch(2, b=8, c=7)
    targets = torch.where(known, torch.rand(8, 7), targets)  # soft targets too
    expected = F.binary_cross_entropy_with_logits(logits[known], targets[known])
    assert partial_bce(logits, targets, known).item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_asl_without_focusing_and_clip_is_bce(reduction):
    logits, targets, known = batch(3, b=6, c=9)
    targets = torch.where(known, torch.rand(6, 9), targets)
    asl = partial_asl(logits, targets, known, gamma_pos=0, gamma_neg=0, clip=0, reduction=reduction)
    bce = partial_bce(logits, targets, known, reduction=reduction)
    assert asl.item() == pytest.approx(bce.item(), rel=1e-12)


def test_soft_target_is_linear_blend_of_hard_targets():
    logits, _, known = batch(4)
    y = torch.full_like(logits, 0.3)
    soft = partial_asl(logits, y, known, reduction="sum")
    pos = partial_asl(logits, torch.ones_like(y), known, reduction="sum")
    neg = partial_asl(logits, torch.zeros_like(y), known, reduction="sum")
    assert soft.item() == pytest.approx(0.3 * pos.item() + 0.7 * neg.item(), rel=1e-12)


def _stationary_probability(gradient, lo=-8.0, hi=8.0):
    """The probability where a one-entry loss's gradient in the logit changes sign (bisection)."""
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gradient(mid) < 0 else (lo, mid)
    return sig((lo + hi) / 2)


def _autograd_gradient(fn, y, **kw):
    def gradient(x):
        logit = torch.tensor([[x]], requires_grad=True)
        fn(logit, torch.tensor([[y]]), torch.ones(1, 1, dtype=torch.bool), **kw).backward()
        return logit.grad.item()
    return gradient


@pytest.mark.parametrize("gamma_neg, expected", [(2.0, 0.599), (4.0, 0.687)])
def test_a_soft_target_is_bces_optimum_but_asl_settles_above_it(gamma_neg, expected):
    """DSRB's blended entries carry soft targets; the README's numbers for where each loss puts them."""
    assert _stationary_probability(_autograd_gradient(partial_bce, 0.5)) == pytest.approx(0.5, abs=1e-9)
    asl = _stationary_probability(_autograd_gradient(partial_asl, 0.5, gamma_neg=gamma_neg))

    def hand(x, y=0.5, clip=0.05):  # d/dx of the formula, focusing weights held constant
        q = sig(x)
        return -y * (1 - q) * (1 - q) + (1 - y) * max(q - clip, 0) ** gamma_neg * q * (1 - q) / min(1 - q + clip, 1)

    assert asl == pytest.approx(_stationary_probability(hand), abs=1e-9)
    assert round(asl, 3) == expected


def _reference_asl(x, y, gp, gn, clip, detach):
    """ASL written independently, with the focusing weights detached or not."""
    p = torch.sigmoid(x)
    pm = (p - clip).clamp(min=0)
    w_pos, w_neg = (1 - p) ** gp, pm**gn
    if detach:
        w_pos, w_neg = w_pos.detach(), w_neg.detach()
    return -(y * w_pos * torch.log(p) + (1 - y) * w_neg * torch.log(1 - pm)).sum()


def test_no_gradient_through_focusing_weights():
    logits, targets, _ = batch(6)
    known = torch.ones_like(targets, dtype=torch.bool)
    grads = {}
    for detach in (True, False):
        x = logits.clone().requires_grad_()
        _reference_asl(x, targets, 1, 4, 0.05, detach).backward()
        grads[detach] = x.grad
    x = logits.clone().requires_grad_()
    partial_asl(x, targets, known, reduction="sum").backward()
    assert not torch.allclose(grads[True], grads[False])
    torch.testing.assert_close(x.grad, grads[True], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- contract and factory


def test_bad_inputs_are_refused():
    logits, targets, known = batch()
    with pytest.raises(ValueError, match="same shape"):
        partial_bce(logits, targets[:, :2], known)
    with pytest.raises(ValueError, match="bool"):
        partial_bce(logits, targets, known.long())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        partial_asl(logits, torch.where(known, -1.0, targets), known)
    with pytest.raises(ValueError, match="reduction"):
        partial_asl(logits, targets, known, reduction="none")


def test_build_loss():
    logits, targets, known = batch()
    asl = build_loss("asl", gamma_neg=2, reduction="sum")
    assert asl(logits, targets, known).item() == pytest.approx(
        partial_asl(logits, targets, known, gamma_neg=2, reduction="sum").item()
    )
    assert build_loss("bce")(logits, targets, known).item() == partial_bce(
        logits, targets, known
    ).item()
    with pytest.raises(ConfigError, match="unknown loss 'focal'"):
        build_loss("focal")
    with pytest.raises(ConfigError, match="gamma"):
        build_loss("bce", gamma_neg=2)
    with pytest.raises(ConfigError, match="reduction"):
        build_loss("asl", reduction="avg")
