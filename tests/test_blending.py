import logging
from collections import defaultdict

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from clipml.blending import PrototypeBank, RepresentationBlending, category_contrastive, quadrant
from clipml.errors import ConfigError

U = float("nan")  # target value of an unknown entry: must never leak into a known one


def peaked_attention(peaks, grid):
    """Attention maps [B, C, N] that peak at the given (row, col) of each (image, class)."""
    h, w = grid
    b, c = len(peaks), len(peaks[0])
    logits = torch.zeros(b, c, h * w)
    for i in range(b):
        for j in range(c):
            r, col = peaks[i][j]
            logits[i, j, r * w + col] = 5.0
    return logits.softmax(dim=-1)


def random_batch(gen, b, c, d, grid, p_known):
    f = torch.randn(b, c, d, generator=gen)
    attention = torch.randn(b, c, grid[0] * grid[1], generator=gen).softmax(-1)
    targets = (torch.rand(b, c, generator=gen) < 0.4).float()
    known = torch.rand(b, c, generator=gen) < p_known
    return f, attention, targets, known


# ---------------------------------------------------------------- quadrant

@pytest.mark.parametrize(
    "grid, peak, expected",
    [
        ((4, 4), (0, 0), 0), ((4, 4), (1, 1), 0), ((4, 4), (0, 3), 1), ((4, 4), (1, 2), 1),
        ((4, 4), (3, 0), 2), ((4, 4), (2, 1), 2), ((4, 4), (2, 2), 3), ((4, 4), (3, 3), 3),
        # 7x7: rows/cols 0-2 are top/left, 3-6 bottom/right (the middle line goes bottom/right)
        ((7, 7), (2, 2), 0), ((7, 7), (2, 3), 1), ((7, 7), (0, 6), 1), ((7, 7), (3, 2), 2),
        ((7, 7), (6, 0), 2), ((7, 7), (3, 3), 3), ((7, 7), (6, 6), 3),
        # non-square 2x3: column 1 is already right (1 >= 3 // 2)
        ((2, 3), (0, 0), 0), ((2, 3), (0, 1), 1), ((2, 3), (1, 0), 2), ((2, 3), (1, 2), 3),
    ],
)
def test_quadrant_of_hand_placed_peaks(grid, peak, expected):
    att = peaked_attention([[peak]], grid)
    assert quadrant(att, grid).tolist() == [[expected]]
    assert RepresentationBlending.quadrant(att, grid).dtype == torch.long


def test_quadrant_rejects_wrong_grid():
    with pytest.raises(ValueError, match="grid 3x3 needs 9"):
        quadrant(torch.rand(1, 1, 8), (3, 3))


# ---------------------------------------------------------------- IPRB

def hand_batch():
    # pairs: 0 <-> 3, 1 <-> 2
    f = torch.tensor(
        [
            [[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]],
            [[0.0, 4.0], [0.0, 8.0], [0.0, 12.0]],
            [[4.0, 4.0], [8.0, 8.0], [-4.0, 4.0]],
            [[-8.0, 0.0], [6.0, 2.0], [2.0, -2.0]],
        ]
    )
    targets = torch.tensor([[1.0, U, U], [U, 0.0, 1.0], [1.0, U, U], [U, 1.0, 0.0]])
    known = ~torch.isnan(targets)
    return f, targets, known


def test_instance_blend_hand_computed():
    f, targets, known = hand_batch()
    blend = RepresentationBlending(3, 2, prototype=False, alpha_init=0.25)
    fb, tb, kb = blend.instance_blend(f, targets, known)
    # blended: (0,1) with 3's positive c1; (1,0) with 2's c0; (2,2) with 1's c2; (3,0) with 0's c0.
    # not blended: (0,2) partner negative, (2,1) partner known negative.
    expected_f = f.clone()
    expected_f[0, 1] = torch.tensor([5.0, 1.5])    # .25*[2,0] + .75*[6,2]
    expected_f[1, 0] = torch.tensor([3.0, 4.0])    # .25*[0,4] + .75*[4,4]
    expected_f[2, 2] = torch.tensor([-1.0, 10.0])  # .25*[-4,4] + .75*[0,12]
    expected_f[3, 0] = torch.tensor([-1.25, 0.0])  # .25*[-8,0] + .75*[1,0]
    assert torch.equal(fb, expected_f)
    expected_t = torch.tensor([[1.0, 0.75, U], [0.75, 0.0, 1.0], [1.0, U, 0.75], [0.75, 1.0, 0.0]])
    torch.testing.assert_close(tb, expected_t, rtol=0, atol=0, equal_nan=True)
    assert kb.tolist() == [[True, True, False], [True, True, True], [True, False, True], [True, True, True]]
    # inputs untouched
    assert torch.equal(hand_batch()[0], f)


def test_instance_blend_odd_batch_middle_image_blends_nothing():
    f, targets, known = hand_batch()
    f, targets, known = f[:3], targets[:3], known[:3]  # pairs 0 <-> 2, 1 alone
    fb, tb, kb = RepresentationBlending(3, 2, prototype=False).instance_blend(f, targets, known)
    assert torch.equal(fb[1], f[1]) and torch.equal(kb[1], known[1])
    assert kb[0].tolist() == [True, False, False]  # partner 2 has no known positive where 0 is unknown
    assert kb[2].tolist() == [True, False, False]


@pytest.mark.parametrize("stored, used", [(1.7, 1.0), (-0.3, 0.0)])
def test_alpha_is_clamped_into_unit_interval(stored, used):
    f, targets, known = hand_batch()
    blend = RepresentationBlending(3, 2, prototype=False)
    with torch.no_grad():
        blend.alpha.fill_(stored)
    fb, tb, kb = blend.instance_blend(f, targets, known)
    assert blend.alpha.item() == used
    mask = kb & ~known
    partner = f.flip(0)
    assert torch.equal(fb[mask], f[mask] if used == 1.0 else partner[mask])
    assert torch.all(tb[mask] == 1.0 - used)


def test_alpha_gradient_through_features_only_by_default():
    f, targets, known = hand_batch()
    blend = RepresentationBlending(3, 2, prototype=False, alpha_init=0.25)
    fb, tb, _ = blend.instance_blend(f, targets, known)
    assert not tb.requires_grad
    fb.sum().backward()
    # d/dα Σ(α f_i + (1-α) f_i') = Σ (f_i - f_i') = -6 - 4 - 12 - 9 over the four blended entries
    assert blend.alpha.grad.item() == pytest.approx(-31.0)

    ref = RepresentationBlending(3, 2, prototype=False, alpha_init=0.25, target_grad=True)
    _, tb, _ = ref.instance_blend(f, targets, known)
    torch.nan_to_num(tb).sum().backward()
    assert ref.alpha.grad.item() == pytest.approx(-4.0)  # four soft targets 1 - α


def test_instance_blend_many_random_batches_against_loop():
    gen = torch.Generator().manual_seed(3)
    blend = RepresentationBlending(5, 3, prototype=False, alpha_init=0.3)
    for _ in range(20):
        f, _, targets, known = random_batch(gen, 7, 5, 3, (2, 2), 0.5)
        fb, tb, kb = blend.instance_blend(f, targets, known)
        for i in range(7):
            j = 6 - i
            for c in range(5):
                hit = (not known[i, c]) and bool(known[j, c]) and targets[j, c] == 1
                want = 0.3 * f[i, c] + 0.7 * f[j, c] if hit else f[i, c]
                assert torch.allclose(fb[i, c], want)
                assert kb[i, c] == (known[i, c] or hit)
                if known[i, c]:
                    assert tb[i, c] == targets[i, c]
                elif hit:
                    assert tb[i, c].item() == pytest.approx(0.7)


# ---------------------------------------------------------------- PPRB

def recognisable_prototypes(blend):
    """P[c, k] = (100 c + 10 k + 1) * ones, so a blended feature names its prototype."""
    c, k, d = blend.prototypes.shape
    code = 100 * torch.arange(c).view(c, 1) + 10 * torch.arange(k).view(1, k) + 1
    blend.prototypes.copy_(code.unsqueeze(-1).float().expand(c, k, d))
    return code


def test_prototype_blend_uses_a_valid_prototype_from_another_quadrant():
    c, d, grid = 6, 4, (4, 4)
    blend = RepresentationBlending(c, d, instance=False, topk=2, beta_init=0.0)
    code = recognisable_prototypes(blend)
    gen = torch.Generator().manual_seed(0)
    used_quadrants = set()
    for seed in range(30):
        valid = torch.rand(c, 4, generator=gen) < 0.5
        valid[0] = False  # a class without prototypes never blends
        blend.prototype_valid.copy_(valid)
        f, attention, targets, known = random_batch(gen, 8, c, d, grid, 0.4)
        own = quadrant(attention, grid)
        fb, tb, kb = blend.prototype_blend(f, targets, known, attention, grid, torch.Generator().manual_seed(seed))
        changed = kb & ~known
        assert not changed[:, 0].any()
        for i in range(8):
            eligible = [
                cc for cc in range(c)
                if not known[i, cc] and any(valid[cc, k] and k != own[i, cc] for k in range(4))
            ]
            assert int(changed[i].sum()) == min(2, len(eligible))
            for cc in changed[i].nonzero().flatten().tolist():
                assert cc in eligible
                k = (int(fb[i, cc, 0].item()) - 1 - 100 * cc) // 10
                assert torch.all(fb[i, cc] == code[cc, k])  # β = 0: exactly the prototype
                assert valid[cc, k] and k != own[i, cc]
                assert tb[i, cc] == 1.0
                used_quadrants.add(k)
        assert torch.equal(fb[~changed], f[~changed])
    assert used_quadrants == {0, 1, 2, 3}


def test_prototype_blend_formula_and_beta_clamp():
    blend = RepresentationBlending(1, 2, instance=False, beta_init=0.25)
    blend.prototypes[0, 3] = torch.tensor([4.0, -4.0])
    blend.prototype_valid[0, 3] = True
    f = torch.tensor([[[8.0, 0.0]]])
    att = peaked_attention([[(0, 0)]], (2, 2))  # own quadrant 0, prototype in 3
    fb, tb, kb = blend.prototype_blend(f, torch.tensor([[U]]), torch.tensor([[False]]), att, (2, 2))
    assert fb.tolist() == [[[5.0, -3.0]]] and tb.tolist() == [[0.75]] and kb.tolist() == [[True]]
    # own peak in the only valid quadrant: nothing to blend
    att = peaked_attention([[(1, 1)]], (2, 2))
    fb, _, kb = blend.prototype_blend(f, torch.tensor([[U]]), torch.tensor([[False]]), att, (2, 2))
    assert torch.equal(fb, f) and kb.tolist() == [[False]]
    with torch.no_grad():
        blend.beta.fill_(3.0)
    att = peaked_attention([[(0, 0)]], (2, 2))
    fb, tb, _ = blend.prototype_blend(f, torch.tensor([[U]]), torch.tensor([[False]]), att, (2, 2))
    assert blend.beta.item() == 1.0 and torch.equal(fb, f) and tb.tolist() == [[0.0]]


@pytest.mark.parametrize("p_known", [0.1, 0.5, 0.9])
def test_prototype_blend_never_touches_known_entries(p_known):
    c, d, grid = 10, 3, (3, 3)
    blend = RepresentationBlending(c, d, instance=False, topk=3)
    blend.prototypes.normal_()
    gen = torch.Generator().manual_seed(1)
    full_images = 0
    for seed in range(40):
        blend.prototype_valid.copy_(torch.rand(c, 4, generator=gen) < 0.7)
        f, attention, targets, known = random_batch(gen, 6, c, d, grid, p_known)
        fb, tb, kb = blend.prototype_blend(f, targets, known, attention, grid, torch.Generator().manual_seed(seed))
        assert torch.equal(fb[known], f[known])
        assert torch.equal(tb[known], targets[known])
        assert torch.equal(kb[known], known[known])
        for i in torch.nonzero(known.all(dim=1)).flatten():
            full_images += 1
            assert torch.equal(fb[i], f[i]) and torch.equal(tb[i], targets[i])
        assert int((kb & ~known).sum(dim=1).max()) <= 3
    if p_known == 0.9:
        assert full_images > 0  # the case the reference got wrong was exercised


def test_prototype_blend_is_deterministic_with_a_seeded_generator():
    c, d, grid = 8, 4, (4, 4)
    blend = RepresentationBlending(c, d, instance=False, topk=2)
    blend.prototypes.normal_()
    blend.prototype_valid.fill_(True)
    f, attention, targets, known = random_batch(torch.Generator().manual_seed(5), 16, c, d, grid, 0.3)
    runs = [
        blend.prototype_blend(f, targets, known, attention, grid, torch.Generator().manual_seed(s))
        for s in (7, 7, 8)
    ]
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0][2], runs[2][2])


def test_coefficients_stay_in_graph_when_nothing_blends():
    """A zero gradient, not None: distributed training must not see an unused parameter."""
    blend = RepresentationBlending(2, 2)  # no valid prototype yet, no known positive
    f = torch.randn(3, 2, 2, requires_grad=True)
    args = (f, torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.bool))
    fp, _, kp = blend.prototype_blend(*args, torch.rand(3, 2, 4), (2, 2))
    fi, _, ki = blend.instance_blend(*args)
    assert torch.equal(fp, f) and torch.equal(fi, f) and not kp.any() and not ki.any()
    (fp.sum() + fi.sum()).backward()
    assert blend.beta.grad.item() == 0.0 and blend.alpha.grad.item() == 0.0


# ---------------------------------------------------------------- prototype bank

def brute_force_cells(batches, grid):
    cells = defaultdict(list)
    h, w = grid
    for f, attention, targets, known in batches:
        for i in range(f.shape[0]):
            for c in range(f.shape[1]):
                if known[i, c] and targets[i, c] >= 0.5:
                    r, col = np.unravel_index(int(np.argmax(attention[i, c].numpy())), (h, w))
                    k = 2 * int(r >= h // 2) + int(col >= w // 2)
                    cells[c, k].append(f[i, c])
    return cells


def test_prototypes_are_means_of_known_positives():
    c, d, grid = 5, 3, (5, 5)
    gen = torch.Generator().manual_seed(2)
    batches = [random_batch(gen, 6, c, d, grid, 0.6) for _ in range(5)]
    for f, _, targets, known in batches:
        targets[:, 4] = 0.0  # class 4: never a known positive
    bank = PrototypeBank(c, d, max_samples=1000, class_names=list("abcde"))
    for f, attention, targets, known in batches:
        bank.update(f, attention, grid, targets, known)
    blend = RepresentationBlending(c, d)
    stats = bank.finalize(blend)
    cells = brute_force_cells(batches, grid)
    assert blend.prototypes.shape == (c, 4, d)
    for cc in range(c):
        for k in range(4):
            if (cc, k) in cells:
                assert blend.prototype_valid[cc, k]
                assert torch.allclose(blend.prototypes[cc, k], torch.stack(cells[cc, k]).mean(0), atol=1e-6)
                assert stats["kept"][cc, k] == stats["seen"][cc, k] == len(cells[cc, k])
            else:
                assert not blend.prototype_valid[cc, k]
    assert not blend.prototype_valid[4].any()
    assert stats["classes_without_positive"] == [4]
    assert stats["valid_cells"] == len(cells)


def test_bank_keeps_max_samples_by_seeded_reservoir():
    c, grid, m = 3, (2, 2), 3
    gen = torch.Generator().manual_seed(4)
    batches = []
    for _ in range(6):
        f, attention, targets, known = random_batch(gen, 10, c, 1, grid, 0.8)
        batches.append((f, attention, targets, known))
    # one-hot identity features: a prototype times its count names the entries it averaged
    positives = sum(int((k & (t >= 0.5)).sum()) for _, _, t, k in batches)
    ids = iter(range(positives))
    onehot_batches, id_cells = [], {}
    for f, attention, targets, known in batches:
        oh = torch.zeros(f.shape[0], c, positives)
        for i, cc in (known & (targets >= 0.5)).nonzero().tolist():
            j = next(ids)
            oh[i, cc, j] = 1.0
        onehot_batches.append((oh, attention, targets, known))
    cells = brute_force_cells(onehot_batches, grid)
    for (cc, k), feats in cells.items():
        for x in feats:
            id_cells[int(x.argmax())] = (cc, k)

    def run(seed):
        bank = PrototypeBank(c, positives, max_samples=m, seed=seed)
        for oh, attention, targets, known in onehot_batches:
            bank.update(oh, attention, grid, targets, known)
        blend = RepresentationBlending(c, positives)
        stats = bank.finalize(blend)
        return blend, stats

    # the documented rule: per cell, the m entries with the smallest seeded keys
    key_gen = torch.Generator().manual_seed(0)
    keys = torch.cat([torch.rand(int((k & (t >= 0.5)).sum()), generator=key_gen) for _, _, t, k in batches])
    blend, stats = run(0)
    for (cc, k), feats in cells.items():
        n = len(feats)
        members = sorted((keys[int(x.argmax())].item(), int(x.argmax())) for x in feats)[:m]
        expected = torch.zeros(positives)
        expected[[j for _, j in members]] = 1.0 / min(n, m)
        assert torch.allclose(blend.prototypes[cc, k], expected)
        assert stats["kept"][cc, k] == min(n, m) and stats["seen"][cc, k] == n
        chosen = (blend.prototypes[cc, k] > 0).nonzero().flatten().tolist()
        assert all(id_cells[j] == (cc, k) for j in chosen)
    assert any(len(feats) > m for feats in cells.values())
    again, _ = run(0)
    other, _ = run(1)
    assert torch.equal(again.prototypes, blend.prototypes)
    assert not torch.equal(other.prototypes, blend.prototypes)


def test_class_without_known_positive_logs_and_never_blends(caplog):
    c, d, grid = 3, 2, (2, 2)
    f = torch.randn(4, c, d)
    attention = torch.rand(4, c, 4).softmax(-1)
    targets = torch.tensor([[1.0, 0.0, 1.0]] * 4)
    known = torch.tensor([[True, True, False]] * 4)  # class 1 known negative only, class 2 unknown only
    bank = PrototypeBank(c, d, class_names=["cat", "dog", "emu"])
    bank.update(f, attention, grid, targets, known)
    blend = RepresentationBlending(c, d)
    with caplog.at_level(logging.WARNING, logger="clipml.blending"):
        stats = bank.finalize(blend)
    assert stats["classes_without_positive"] == [1, 2]
    assert "dog" in caplog.text and "emu" in caplog.text and "cat" not in caplog.text
    assert blend.prototype_valid[0].any() and not blend.prototype_valid[1:].any()
    unknown = torch.zeros(4, c, dtype=torch.bool)
    fb, _, kb = blend.prototype_blend(f, targets, unknown, attention, grid, torch.Generator().manual_seed(0))
    assert not kb[:, 1:].any() and torch.equal(fb[:, 1:], f[:, 1:])


def test_empty_bank_gives_no_valid_prototype(caplog):
    blend = RepresentationBlending(2, 3)
    blend.prototype_valid.fill_(True)
    with caplog.at_level(logging.WARNING, logger="clipml.blending"):
        stats = PrototypeBank(2, 3).finalize(blend)
    assert not blend.prototype_valid.any() and torch.equal(blend.prototypes, torch.zeros(2, 4, 3))
    assert stats["classes_without_positive"] == [0, 1] and "2 of 2 classes" in caplog.text


# ---------------------------------------------------------------- module plumbing

def test_state_dict_round_trip_through_safetensors(tmp_path):
    blend = RepresentationBlending(4, 3, alpha_init=0.3, beta_init=0.7)
    blend.prototypes.normal_()
    blend.prototype_valid.copy_(torch.rand(4, 4) < 0.5)
    state = blend.state_dict()
    assert set(state) == {"alpha", "beta", "prototypes", "prototype_valid"}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "b.safetensors"))
    fresh = RepresentationBlending(4, 3)
    fresh.load_state_dict(load_file(str(tmp_path / "b.safetensors")))
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]) and value.dtype == state[key].dtype


def test_disabled_branches_own_no_state():
    inst = RepresentationBlending(2, 2, prototype=False)
    assert set(inst.state_dict()) == {"alpha"}
    with pytest.raises(RuntimeError, match="prototype blending is disabled"):
        inst.prototype_blend(torch.zeros(1, 2, 2), torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.bool),
                             torch.rand(1, 2, 4), (2, 2))
    proto = RepresentationBlending(2, 2, instance=False)
    assert [name for name, _ in proto.named_parameters()] == ["beta"]
    assert [name for name, _ in RepresentationBlending(2, 2).named_parameters()] == ["alpha", "beta"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"instance": False, "prototype": False}, "model.blending.instance or model.blending.prototype"),
        ({"num_prototypes": 10}, "num_prototypes must be 4"),
        ({"alpha_init": 1.5}, "alpha_init must lie in"),
        ({"topk": 0}, "topk must be >= 1"),
        ({"max_samples": 0}, "max_samples must be >= 1"),
    ],
)
def test_bad_settings_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RepresentationBlending(3, 2, **kwargs)


def test_wrong_shapes_are_rejected():
    blend = RepresentationBlending(3, 2)
    with pytest.raises(ValueError, match=r"f must be \[B, 3, 2\]"):
        blend.instance_blend(torch.zeros(2, 3, 5), torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="known must be a bool"):
        blend.instance_blend(torch.zeros(2, 3, 2), torch.zeros(2, 3), torch.zeros(2, 3))


# ---------------------------------------------------------------- category-wise contrastive term

def brute_force_contrastive(f, targets, known):
    """The documented formula over every class and unordered pair of images, one at a time."""
    pulls, pushes = [], []
    b, c, _ = f.shape
    for k in range(c):
        for i in range(b):
            for j in range(i + 1, b):
                if not (known[i, k] and known[j, k]):
                    continue
                s = float(f[i, k] @ f[j, k]) / (float(f[i, k].norm()) * float(f[j, k].norm()))
                pos_i, pos_j = bool(targets[i, k] >= 0.5), bool(targets[j, k] >= 0.5)
                if pos_i and pos_j:
                    pulls.append(1 - s)
                elif pos_i != pos_j:
                    pushes.append(max(0.0, s))
    return (np.mean(pulls) if pulls else 0.0) + (np.mean(pushes) if pushes else 0.0)


def test_contrastive_hand_computed():
    # class 0: positives along x and y (cos 0), negative at 45° (cos 1/√2 to each), one unknown;
    # class 1: one positive, one negative pointing away (cos -1, pushed by 0), the rest unknown.
    f = torch.tensor(
        [
            [[1.0, 0.0], [1.0, 1.0]],
            [[0.0, 3.0], [-2.0, -2.0]],
            [[2.0, 2.0], [5.0, 0.0]],
            [[1.0, 0.0], [0.0, 1.0]],
        ]
    )
    targets = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, U], [U, U]])
    known = ~torch.isnan(targets)
    # pull: one pair, 1 - 0 = 1; push: (0,2) and (1,2) in class 0 at 1/√2, (0,1) in class 1 at 0
    expected = 1.0 + (2 * 0.5 ** 0.5 + 0.0) / 3
    assert category_contrastive(f, targets, known).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("p_known", [0.3, 0.7, 1.0])
def test_contrastive_matches_loop_on_random_partial_labels(float64, p_known):
    gen = torch.Generator().manual_seed(11)
    for b in (1, 2, 5, 8):
        f, _, targets, known = random_batch(gen, b, 6, 4, (2, 2), p_known)
        targets = torch.where(known, targets, torch.full_like(targets, U))
        got = category_contrastive(f, targets, known)
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(brute_force_contrastive(f, targets, known), rel=1e-12, abs=1e-12)


def test_contrastive_ignores_unknown_entries(float64):
    gen = torch.Generator().manual_seed(5)
    f, _, targets, known = random_batch(gen, 6, 5, 3, (2, 2), 0.5)
    assert known.any() and not known.all()
    f = f.requires_grad_()
    loss = category_contrastive(f, targets, known)
    loss.backward()
    assert loss.item() > 0
    assert torch.all(f.grad[~known] == 0) and f.grad[known].abs().sum() > 0
    changed = torch.where(known.unsqueeze(-1), f.detach(), 100 * torch.randn(f.shape, generator=gen))
    flipped = torch.where(known, targets, 1.0 - targets)  # an unknown entry's target value means nothing
    assert category_contrastive(changed, flipped, known).item() == loss.item()


@pytest.mark.parametrize(
    "targets, known",
    [
        ([[1.0, 0.0], [0.0, 1.0]], [[False, False], [False, False]]),  # nothing known
        ([[0.0, 0.0], [0.0, 0.0]], [[True, True], [True, True]]),  # negatives only: no positive to pair
        ([[1.0, 0.0], [0.0, 1.0]], [[True, False], [False, True]]),  # a positive's partner is unknown
        ([[1.0, 1.0], [1.0, 0.0]], [[True, True], [False, False]]),  # positives all in one image
    ],
)
def test_contrastive_without_pairs_is_zero_with_finite_gradient(targets, known):
    f = torch.randn(2, 2, 3, requires_grad=True)
    loss = category_contrastive(f, torch.tensor(targets), torch.tensor(known))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(f.grad == 0)


def test_contrastive_single_image_is_zero():
    f = torch.randn(1, 3, 4, requires_grad=True)
    loss = category_contrastive(f, torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(f.grad == 0)


def test_contrastive_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"f must be \[B, C, D\]"):
        category_contrastive(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="targets and known must be"):
        category_contrastive(torch.zeros(2, 3, 4), torch.zeros(2, 2), torch.zeros(2, 3, dtype=torch.bool))
