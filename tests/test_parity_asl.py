"""clipml's ASL against golden values of the ASL reference code (Alibaba-MIIL/ASL AsymmetricLoss).

tests/golden/asl.npz holds AsymmetricLoss's values and gradients (focusing weights without
gradient: its default disable_torch_grad_focal_loss=True) on fixed logits with hard and soft
targets, written by `benchmarks/parity/asl.py --write-golden`. No reference code is needed here.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from clipml.errors import ConfigError
from clipml.experiment import load_experiment
from clipml.losses import build_loss, partial_asl

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = np.load(ROOT / "tests" / "golden" / "asl.npz")
X, Y, Y_SOFT = (torch.from_numpy(GOLDEN[k]) for k in ("x", "y", "y_soft"))
KNOWN = torch.ones_like(Y, dtype=torch.bool)


def value_and_grad(targets, **settings):
    x = X.clone().requires_grad_(True)
    loss = partial_asl(x, targets, KNOWN, clip=0.05, eps=1e-8, reduction="sum", **settings)
    loss.backward()
    return loss.detach(), x.grad


def assert_reference(name, loss, grad):
    torch.testing.assert_close(loss, torch.from_numpy(GOLDEN[f"{name}_value"]), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(grad, torch.from_numpy(GOLDEN[f"{name}_grad"]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gammas", [(1, 4), (0, 4), (1, 2)])
@pytest.mark.parametrize("soft_focusing", ["per_term", "mixed"])
def test_hard_targets_match_asymmetric_loss_with_either_soft_rule(gammas, soft_focusing):
    loss, grad = value_and_grad(Y, gamma_pos=gammas[0], gamma_neg=gammas[1], soft_focusing=soft_focusing)
    assert_reference(f"hard_g{gammas[0]}_{gammas[1]}", loss, grad)


@pytest.mark.parametrize("gammas", [(1, 2), (1, 4)])
def test_soft_targets_mixed_focusing_is_the_reference(gammas):
    loss, grad = value_and_grad(Y_SOFT, gamma_pos=gammas[0], gamma_neg=gammas[1], soft_focusing="mixed")
    assert_reference(f"soft_g{gammas[0]}_{gammas[1]}", loss, grad)
    per_term, _ = value_and_grad(Y_SOFT, gamma_pos=gammas[0], gamma_neg=gammas[1], soft_focusing="per_term")
    reference = float(GOLDEN[f"soft_g{gammas[0]}_{gammas[1]}_value"])
    assert abs(float(per_term) - reference) > 1.0  # the default rule is a different loss on soft targets


def test_published_dsrb_config_builds_the_reference_soft_target_loss():
    cfg = load_experiment(str(ROOT / "configs" / "coco2014" / "sdm_csp_dsrb.yaml"))
    loss_fn = build_loss("asl", gamma_pos=cfg.loss.gamma_pos, gamma_neg=cfg.loss.gamma_neg, clip=cfg.loss.clip,
                         reduction=cfg.loss.reduction, soft_focusing=cfg.loss.soft_focusing)
    x = X.clone().requires_grad_(True)
    loss = loss_fn(x, Y_SOFT, KNOWN)
    loss.backward()
    assert_reference(f"soft_g{cfg.loss.gamma_pos:g}_{cfg.loss.gamma_neg:g}", loss.detach(), x.grad)


def test_unknown_soft_focusing_is_refused():
    with pytest.raises(ConfigError, match="soft_focusing"):
        build_loss("asl", soft_focusing="single")
