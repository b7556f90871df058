import math

import pytest
import torch

from clipml.errors import ConfigError
from clipml.transport import ConditionalTransport, transport_terms


# Exact comparisons with hand-computed and brute-force floats.
pytestmark = pytest.mark.usefixtures("float64")


# ---------------------------------------------------------------- independent reference


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def brute_force(dense, text, targets, known, tau, rho, bg=None, loc_w=None, lab_w=None, part="both"):
    """L_CT from the formula with Python loops over images, locations and labels, plain floats.

    ``part`` "forward" / "backward" returns the mean of that term alone over contributing images.
    """
    dense, text, targets, known = dense.tolist(), text.tolist(), targets.tolist(), known.tolist()
    bg = None if bg is None else bg.tolist()
    loc_w = None if loc_w is None else loc_w.tolist()
    lab_w = None if lab_w is None else lab_w.tolist()
    total, count = 0.0, 0
    for b in range(len(dense)):
        vecs, v = [], []
        for c in range(len(text)):
            weight = 1.0 if lab_w is None else lab_w[b][c]
            if known[b][c] and targets[b][c] >= 0.5 and weight > 0:
                vecs.append(text[c])
                v.append(weight)
        if not vecs:
            continue
        if bg is not None:
            vecs.append(bg)
            v.append(sum(v) / len(v))
        locs = [j for j in range(len(dense[b])) if loc_w is None or loc_w[b][j] > 0]
        if not locs:
            continue
        w = {j: (1.0 if loc_w is None else loc_w[b][j]) for j in locs}
        w_sum, v_sum = sum(w.values()), sum(v)
        cos = {(j, k): _cos(dense[b][j], vecs[k]) for j in locs for k in range(len(vecs))}
        fwd = 0.0
        for j in locs:
            norm = sum(v[k] * math.exp(cos[j, k] / tau) for k in range(len(vecs)))
            inner = sum(
                v[k] * math.exp(cos[j, k] / tau) / norm * (1 - cos[j, k]) for k in range(len(vecs))
            )
            fwd += w[j] / w_sum * inner
        bwd = 0.0
        for k in range(len(vecs)):
            norm = sum(w[j] * math.exp(cos[j, k] / tau) for j in locs)
            inner = sum(w[j] * math.exp(cos[j, k] / tau) / norm * (1 - cos[j, k]) for j in locs)
            bwd += v[k] / v_sum * inner
        if part == "forward":
            total += fwd
        elif part == "backward":
            total += bwd
        else:
            total += rho * fwd + (1 - rho) * bwd
        count += 1
    return total / count if count else 0.0


def random_batch(seed=0, b=5, n=6, c=7, d=4):
    """Random features and a partial label set with soft targets and awkward images."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(b, n, d, generator=g)
    text = torch.randn(c, d, generator=g)
    targets = (torch.rand(b, c, generator=g) < 0.5).double()
    targets[0, :3] = torch.tensor([0.5, 0.49, 0.8])  # soft targets on both sides of 0.5
    known = torch.rand(b, c, generator=g) < 0.6
    known[0, :3] = True
    known[1] = False  # image 1: nothing known
    known[2] = known[2] & (targets[2] < 0.5)  # image 2: known negatives only
    known[3, 0], targets[3, 0] = True, 1.0
    loc_w = torch.rand(b, n, generator=g) * 2
    loc_w[0, 1] = 0.0  # an excluded location
    loc_w[4] = 0.0  # image 4: no location left
    lab_w = torch.rand(b, c, generator=g) * 3
    lab_w[0, 2] = 0.0  # an excluded label
    bg = torch.randn(d, generator=g)
    return dense, text, targets, known, loc_w, lab_w, bg


def module(tau=0.3, rho=0.2, bg=None):
    ct = ConditionalTransport(embed_dim=4 if bg is None else bg.shape[0], tau_nav=tau, rho=rho,
                              background=bg is not None)
    if bg is not None:
        with torch.no_grad():
            ct.background.copy_(bg)
    return ct


# ---------------------------------------------------------------- equals the reference


@pytest.mark.parametrize("rho", [0.0, 0.2, 0.65, 1.0])
@pytest.mark.parametrize("with_bg", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_brute_force(rho, with_bg, weighted):
    for seed in range(3):
        dense, text, targets, known, loc_w, lab_w, bg = random_batch(seed)
        bg = bg if with_bg else None
        kw = dict(location_weights=loc_w, label_weights=lab_w) if weighted else {}
        got = module(0.3, rho, bg)(dense, text, targets, known, **kw)
        want = brute_force(dense, text, targets, known, 0.3, rho, bg,
                           loc_w if weighted else None, lab_w if weighted else None)
        assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-14)


def test_rho_one_and_zero_are_the_pure_terms():
    dense, text, targets, known, loc_w, lab_w, bg = random_batch(7)
    for part, rho in (("forward", 1.0), ("backward", 0.0)):
        got = module(0.2, rho, bg)(dense, text, targets, known, loc_w, lab_w)
        want = brute_force(dense, text, targets, known, 0.2, rho, bg, loc_w, lab_w, part=part)
        assert got.item() == pytest.approx(want, rel=1e-12)
    terms = module(0.2, 0.5, bg).terms(dense, text, targets, known, loc_w, lab_w)
    kept = terms.contributing
    assert kept.tolist() == [True, False, False, True, False]
    assert terms.forward[kept].mean().item() == pytest.approx(
        brute_force(dense, text, targets, known, 0.2, 1.0, bg, loc_w, lab_w, part="forward"))
    mixed = module(0.2, 0.3, bg)(dense, text, targets, known, loc_w, lab_w)
    assert mixed.item() == pytest.approx(
        0.3 * terms.forward[kept].mean().item() + 0.7 * terms.backward[kept].mean().item())


# ---------------------------------------------------------------- hand-computed cases


def test_hand_computed_one_label():
    # z_1 = e1, z_2 = e2, t = e1: cos (1, 0), cost (0, 1). One label: pi_fwd = 1, so the
    # forward term is the mean cost 0.5; pi_bwd = softmax(2, 0) puts 1/(1+e^2) on the cost-1 location.
    dense = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    text = torch.tensor([[1.0, 0.0]])
    targets, known = torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool)
    ct = ConditionalTransport(2, tau_nav=0.5, rho=0.2)
    expected = 0.2 * 0.5 + 0.8 / (1 + math.e**2)
    assert ct(dense, text, targets, known).item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.195362, abs=1e-6)


def test_hand_computed_two_labels_with_location_weights():
    # cos = identity, cost = 1 - identity. Uniform: every row and column of either navigator
    # puts 1/(1+e^2) on its cost-1 entry, whatever rho.
    dense = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    targets, known = torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool)
    for rho in (0.0, 0.2, 1.0):
        ct = ConditionalTransport(2, tau_nav=0.5, rho=rho)
        assert ct(dense, text, targets, known).item() == pytest.approx(1 / (1 + math.e**2))
    # Location weights (3, 1) -> (0.75, 0.25). Forward: each location still 1/(1+e^2), weighted
    # mean the same. Backward, label 1: logits (2 + log .75, log .25) -> 1/(3e^2 + 1) on location 2;
    # label 2: logits (log .75, 2 + log .25) -> 3/(3 + e^2) on location 1.
    loc_w = torch.tensor([[3.0, 1.0]])
    e2 = math.e**2
    fwd, bwd = 1 / (1 + e2), (1 / (3 * e2 + 1) + 3 / (3 + e2)) / 2
    ct = ConditionalTransport(2, tau_nav=0.5, rho=0.2)
    assert ct(dense, text, targets, known, location_weights=loc_w).item() == pytest.approx(
        0.2 * fwd + 0.8 * bwd, rel=1e-12)


def test_hand_computed_background():
    # One label t = e1 and a background e2 over z = (e1, e2): the background turns the one-label
    # case into the symmetric two-label case, 1/(1+e^2) in both directions.
    dense = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    ct = ConditionalTransport(2, tau_nav=0.5, rho=0.4, background=True)
    with torch.no_grad():
        ct.background.copy_(torch.tensor([0.0, 3.0]))  # only the direction matters
    loss = ct(dense, torch.tensor([[1.0, 0.0]]), torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool))
    assert loss.item() == pytest.approx(1 / (1 + math.e**2), rel=1e-12)


# ---------------------------------------------------------------- gradients


def test_gradients_reach_text_and_background_not_frozen_inputs():
    dense, text, targets, known, loc_w, lab_w, bg = random_batch(3)
    prompts = text.clone().requires_grad_(True)  # stand-in for learnable prompt contexts
    ct = module(0.3, 0.2, bg)
    loss = ct(dense, prompts * 1.0, targets, known)  # dense frozen (requires_grad False)
    loss.backward()
    assert dense.grad is None
    assert torch.isfinite(prompts.grad).all() and prompts.grad.abs().sum() > 0
    assert torch.isfinite(ct.background.grad).all() and ct.background.grad.abs().sum() > 0
    used = (known & (targets >= 0.5)).any(dim=0)
    assert (prompts.grad[used].abs().sum(dim=1) > 0).all()
    assert (prompts.grad[~used] == 0).all()


def test_gradient_flows_through_navigators_and_costs():
    # gradcheck compares autograd with finite differences of the full loss: a detached navigator
    # would leave out its share of the derivative and fail.
    dense, text, targets, known, loc_w, lab_w, bg = random_batch(4, n=3, c=4, d=3)
    dense.requires_grad_(True)
    text.requires_grad_(True)
    bg.requires_grad_(True)

    def both_terms(d, t, background):
        parts = transport_terms(d, t, targets, known, 0.3, background, loc_w, lab_w)
        return torch.stack([parts.forward, parts.backward])

    assert torch.autograd.gradcheck(both_terms, (dense, text, bg), fast_mode=True)


def test_no_known_positive_anywhere_gives_zero_with_graph_and_no_nan():
    dense, text, targets, known, loc_w, lab_w, bg = random_batch(5)
    dense.requires_grad_(True)
    text.requires_grad_(True)
    ct = module(0.3, 0.2, bg)
    for kn in (torch.zeros_like(known), known & (targets < 0.5)):
        loss = ct(dense, text, targets, kn, loc_w, lab_w)
        assert loss.item() == 0.0 and loss.requires_grad
        dense.grad = text.grad = ct.background.grad = None
        loss.backward()
        for grad in (dense.grad, text.grad, ct.background.grad):
            assert torch.isfinite(grad).all() and (grad == 0).all()


def test_images_without_known_positive_contribute_nothing():
    dense, text, targets, known, loc_w, lab_w, bg = random_batch(6)
    dense.requires_grad_(True)
    ct = module(0.3, 0.2, bg)
    full = ct(dense, text, targets, known)
    keep = (known & (targets >= 0.5)).any(dim=1)
    assert keep.tolist() == [True, False, False, True, True]
    sub = ct(dense[keep], text, targets[keep], known[keep])
    assert full.item() == pytest.approx(sub.item(), rel=1e-13)
    full.backward()
    assert torch.isfinite(dense.grad).all()
    assert (dense.grad[~keep] == 0).all()


# ---------------------------------------------------------------- unknown entries have no effect


def test_unknown_class_text_and_unknown_targets_have_no_effect():
    dense, text, targets, known, loc_w, lab_w, bg = random_batch(8)
    known[:, 5] = False  # class 5 unknown in every image
    ct = module(0.3, 0.3, bg)
    text1 = text.clone().requires_grad_(True)
    loss1 = ct(dense, text1, targets, known, loc_w, lab_w)
    loss1.backward()
    text2 = text.clone()
    text2[5] = torch.tensor([100.0, -3.0, float("nan"), float("inf")])
    targets2 = torch.where(known, targets, torch.rand(targets.shape) + 0.5)
    lab_w2 = torch.where(known, lab_w, torch.full_like(lab_w, float("nan")))
    text2.requires_grad_(True)
    dense2 = dense.clone().requires_grad_(True)
    loss2 = ct(dense2, text2, targets2, known, loc_w, lab_w2)
    loss2.backward()
    assert loss2.item() == loss1.item()
    assert (text1.grad[5] == 0).all() and (text2.grad[5] == 0).all()
    assert torch.equal(text1.grad[:5], text2.grad[:5])
    assert torch.isfinite(dense2.grad).all()


def test_excluded_locations_have_no_effect():
    # Locations of an image with no known positive, and zero-weight locations, may hold anything.
    dense, text, targets, known, loc_w, lab_w, bg = random_batch(10)
    ct = module(0.3, 0.3, bg)
    base = ct(dense, text, targets, known, loc_w, lab_w)
    poisoned = dense.clone()
    poisoned[1] = float("nan")  # image 1: nothing known
    poisoned[0, 1] = float("inf")  # location weight 0
    poisoned.requires_grad_(True)
    loss = ct(poisoned, text, targets, known, loc_w, lab_w)
    loss.backward()
    assert loss.item() == base.item()
    assert (poisoned.grad[1] == 0).all() and (poisoned.grad[0, 1] == 0).all()
    assert torch.isfinite(poisoned.grad).all() and poisoned.grad[0].abs().sum() > 0


def test_zero_weights_exclude_and_scale_does_not_matter():
    dense, text, targets, known, loc_w, lab_w, bg = random_batch(9)
    ct = module(0.3, 0.5, bg)
    base = ct(dense, text, targets, known, loc_w, lab_w)
    scaled = ct(dense, text, targets, known, loc_w * torch.rand(5, 1) * 7, lab_w * 4.0)
    assert scaled.item() == pytest.approx(base.item(), rel=1e-12)
    # A zero location weight is the same as removing that location (uniform weights otherwise).
    ones = torch.ones(5, 6)
    ones[:, 2] = 0.0
    dropped = torch.cat([dense[:, :2], dense[:, 3:]], dim=1)
    assert ct(dense, text, targets, known, location_weights=ones).item() == pytest.approx(
        ct(dropped, text, targets, known).item(), rel=1e-12)
    # A zero label weight is the same as the label being unknown.
    lw = torch.ones(5, 7)
    lw[0, 0] = 0.0
    kn = known.clone()
    kn[0, 0] = False
    assert ct(dense, text, targets, known, label_weights=lw).item() == pytest.approx(
        ct(dense, text, targets, kn).item(), rel=1e-12)


# ---------------------------------------------------------------- settings and misuse


def test_defaults_dtype_and_checks():
    ct = ConditionalTransport(8)
    assert (ct.tau_nav, ct.rho, ct.background) == (0.05, 0.2, None)
    ct_bg = ConditionalTransport(8, background=True)
    assert ct_bg.background.shape == (8,) and ct_bg.background.requires_grad
    assert [name for name, _ in ct_bg.named_parameters()] == ["background"]
    dense = torch.randn(2, 3, 8, dtype=torch.bfloat16)
    text = torch.randn(4, 8, dtype=torch.bfloat16)
    targets, known = torch.ones(2, 4), torch.ones(2, 4, dtype=torch.bool)
    assert ct(dense, text, targets, known).dtype == torch.float32
    for bad in (dict(rho=1.5), dict(rho=-0.1), dict(tau_nav=0.0), dict(embed_dim=0)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            ConditionalTransport(**{"embed_dim": 8, **bad})
    with pytest.raises(ValueError, match="embed_dim=8"):
        ct(torch.randn(2, 3, 5), torch.randn(4, 5), targets, known)
    with pytest.raises(ValueError, match="targets and known"):
        ct(torch.randn(2, 3, 8), text, torch.ones(2, 3), known)
    with pytest.raises(ValueError, match="bool"):
        ct(torch.randn(2, 3, 8), text, targets, known.double())
    with pytest.raises(ValueError, match=r"\[0, 1\]; found 2.0"):
        ct(torch.randn(2, 3, 8), text, targets * 2, known)
    with pytest.raises(ValueError, match="location_weights must be finite"):
        ct(torch.randn(2, 3, 8), text, targets, known, location_weights=-torch.ones(2, 3))
    with pytest.raises(ValueError, match="label_weights must have shape"):
        ct(torch.randn(2, 3, 8), text, targets, known, label_weights=torch.ones(2, 3))
