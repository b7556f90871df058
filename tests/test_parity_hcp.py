"""clipml's DSRB options against golden values of the HCP-MLR-PL reference code (DSRB).

tests/golden/hcp_dsrb.npz holds the reference's own outputs on small fixed inputs, written by
`benchmarks/parity/hcp.py --write-golden` (SemanticDecoupling, ContrastiveLoss,
mixupPrototype_featuremap, computePrototype_featuremap, DSRB.py's contrastive weight per batch).
No reference code is needed here.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from clipml.blending import PrototypeBank, RepresentationBlending, category_contrastive, peak_scores, quadrant
from clipml.decoupler import SemanticDecoupler
from clipml.methods.terms import Step, contrastive_share
from clipml.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = np.load(ROOT / "tests" / "golden" / "hcp_dsrb.npz")
PUBLISHED = [ROOT / "configs" / dataset / "sdm_csp_dsrb.yaml" for dataset in ("coco2014", "voc2007", "nuswide", "vg200")]
S = 4  # the reference maps are 4 x 4


def golden(name: str) -> torch.Tensor:
    return torch.from_numpy(GOLDEN[name])


def published_blending():
    return load_experiment(str(PUBLISHED[0])).model.blending


def test_published_dsrb_configs_choose_the_reference_rules_except_the_zero_row():
    for path in PUBLISHED:
        cfg = load_experiment(str(path))
        blend = cfg.model.blending
        assert (blend.peak, blend.empty_cells, blend.contrastive_form, blend.contrastive_schedule) == (
            "feature", "class_mean", "mined", "from_start"), path
        assert blend.contrastive_weight == 0.05 and blend.topk == 1, path
        assert blend.prototype_zero_row is False, path  # the reference's placeholder-row bug is not copied
        assert cfg.model.method_options.decoupler_extra_linear is False, path  # the seed paper's decoupler
        assert (cfg.loss.name, cfg.loss.soft_focusing) == ("asl", "mixed"), path
        if cfg.data.dataset == "voc2007":
            assert cfg.data.options["difficult"] == "negative"  # SARB/DSRB's voc2007.py rule


def test_decoupler_with_the_extra_linear_layer_is_the_reference_decoupler():
    weights = {k: golden(f"decoupler_{k}") for k in ("fc1", "fc2", "fc3_w", "fc3_b", "fc4_w", "fc4_b")}
    dense, words = golden("decoupler_dense"), golden("decoupler_words")
    decoupler = SemanticDecoupler(dense.shape[-1], words.shape[-1], weights["fc1"].shape[0], extra_linear=True)
    with torch.no_grad():
        decoupler.U.weight.copy_(weights["fc1"])
        decoupler.V.weight.copy_(weights["fc2"])
        decoupler.H.weight.copy_(weights["fc3_w"])
        decoupler.H.bias.copy_(weights["fc3_b"])
        decoupler.P.weight.copy_(weights["fc4_w"])
        decoupler.P.bias.copy_(weights["fc4_b"])
        features, attention = decoupler(dense, words)
    torch.testing.assert_close(features, golden("decoupler_features"), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attention, golden("decoupler_attention"), rtol=1e-5, atol=1e-6)
    assert SemanticDecoupler(8, 4, 16).H is None  # the default has no extra layer


@pytest.mark.parametrize("batch", [4, 8])
def test_mined_contrastive_term_is_the_reference_contrastive_loss(batch):
    f = golden(f"contrastive_b{batch}_f").requires_grad_(True)
    t = golden(f"contrastive_b{batch}_t")
    generator = torch.Generator().manual_seed(int(GOLDEN[f"contrastive_b{batch}_seed"]))
    value = category_contrastive(f, (t == 1).float(), t != 0, "mined", generator)
    value.backward()
    torch.testing.assert_close(value, golden(f"contrastive_b{batch}_value"), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(f.grad, golden(f"contrastive_b{batch}_grad"), rtol=1e-5, atol=1e-7)
    hinge = category_contrastive(f.detach(), (t == 1).float(), t != 0, "hinge")
    assert abs(float(hinge) - float(golden(f"contrastive_b{batch}_value"))) > 1e-2


def test_contrastive_schedule_from_start_is_the_reference_ramp():
    reference = GOLDEN["contrastive_schedule_reference"]  # [epochs, batches]
    blend = published_blending()
    epochs, batches = reference.shape
    ours = np.array([[contrastive_share(blend, Step(e, i, batches)) for i in range(batches)] for e in range(epochs)])
    np.testing.assert_array_equal(ours, reference)
    assert reference[0, 0] == 0 and reference[0, -1] < 1 and (reference[1:] == 1).all()


def test_pprb_with_feature_peaks_blends_what_the_reference_blends():
    coef, tokens, targets = golden("pprb_coef"), golden("pprb_tokens"), golden("pprb_targets")
    beta = float(GOLDEN["pprb_beta"])
    num_classes, dim = coef.shape[1], tokens.shape[-1]
    blend = RepresentationBlending(num_classes, dim, instance=False, prototype=True, beta_init=beta)
    peaks = peak_scores(coef, tokens, published_blending().peak)
    own = quadrant(peaks, (S, S))
    with torch.no_grad():
        blend.prototypes.copy_(golden("pprb_prototypes"))
        # The reference was run with its quadrant offset forced to 1: allow only that quadrant, from our own
        # peak, so the features match only where both place the peak in the same quadrant.
        for b, c in (targets == 0).nonzero().tolist():
            blend.prototype_valid[c, (own[b, c] - 1) % 4] = True
    f = torch.einsum("bcn,bnd->bcd", coef, tokens)
    fb, tb, kb = blend.prototype_blend(f, (targets == 1).float(), targets != 0, peaks, (S, S),
                                       torch.Generator().manual_seed(0))
    torch.testing.assert_close(fb, golden("pprb_mixed"), rtol=1e-5, atol=1e-5)
    reference_targets = golden("pprb_mixed_targets")
    torch.testing.assert_close(torch.where(kb, torch.where(tb == 1, 1.0, torch.where(tb == 0, -1.0, tb)), 0.0),
                               reference_targets)


def bank_prototypes(zero_row: bool, empty_cells: str, peak: str):
    coefs, tokens, targets = golden("protos_coef"), golden("protos_tokens"), golden("protos_targets")
    num_classes, dim = coefs.shape[2], tokens.shape[-1]
    blend = RepresentationBlending(num_classes, dim, instance=False, prototype=True)
    bank = PrototypeBank(num_classes, dim, max_samples=int(GOLDEN["protos_max_samples"]), zero_row=zero_row,
                         empty_cells=empty_cells)
    for coef, token, target in zip(coefs, tokens, targets):
        bank.update(torch.einsum("bcn,bnd->bcd", coef, token), peak_scores(coef, token, peak), (S, S),
                    (target == 1).float(), target != 0)
    stats = bank.finalize(blend)
    return blend.prototypes, blend.prototype_valid, stats


def test_prototype_options_reproduce_compute_prototype_featuremap():
    protos, valid, stats = bank_prototypes(zero_row=True, empty_cells="class_mean", peak="feature")
    assert stats["class_mean_cells"] > 0 and bool(valid.all())
    torch.testing.assert_close(protos, golden("protos_reference"), rtol=1e-5, atol=1e-6)


def test_published_prototypes_fill_empty_cells_and_fix_the_zero_row():
    blend = published_blending()
    protos, valid, stats = bank_prototypes(blend.prototype_zero_row, blend.empty_cells, blend.peak)
    reference, kept = golden("protos_reference"), stats["kept"]
    sampled = kept > 0
    assert bool(valid.all()) and not bool(sampled.all())
    torch.testing.assert_close(protos[~sampled], reference[~sampled], rtol=1e-5, atol=1e-6)
    # sampled cells: the mean of their n samples, where the reference divides by n + 1
    scale = ((kept + 1) / kept.clamp(min=1)).unsqueeze(-1)
    torch.testing.assert_close(protos[sampled], (reference * scale)[sampled], rtol=1e-5, atol=1e-6)


def test_default_rules_leave_empty_cells_undrawn_and_peak_on_attention():
    protos, valid, stats = bank_prototypes(zero_row=False, empty_cells="skip", peak="attention")
    assert stats["class_mean_cells"] == 0
    assert torch.equal(valid, stats["kept"] > 0)
