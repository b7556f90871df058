"""Partial-label losses: only known label entries contribute (METHODS.md §5).

Every loss takes ``logits [B, C]``, ``targets [B, C]`` float in [0, 1] (soft targets allowed)
and ``known [B, C]`` bool. Unknown entries are replaced by harmless values *before* any
arithmetic and dropped again with ``torch.where``, so their logits and targets (whatever they
are, ±inf or NaN included) change neither the loss nor any gradient, and get a gradient of
exactly 0 themselves.

Reductions: ``"mean"`` divides the summed loss by the number of known entries (a batch with no
known entry gives 0, with the graph intact); ``"sum"`` is what the ASL and DualCoOp reference
code return (``-loss.sum()`` over the known entries). The published DualCoOp learning rate
(SGD 0.002) was tuned for the sum, so a faithful DualCoOp config uses ``reduction="sum"``.
"""
import functools
import inspect
import math
from typing import Any, Callable, Dict

import torch
import torch.nn.functional as F

from clipml.errors import ConfigError

REDUCTIONS = ("mean", "sum")
SOFT_FOCUSING = ("per_term", "mixed")
REFERENCE_REDUCTION = {"bce": "mean", "asl": "sum", "ranking": "mean"}
"""Each loss's reduction in its reference: METHODS §5's partial BCE averages over the known
entries; ASL's and DualCoOp's code sum; TaI-DPT's ranking loss averages over images. Configs
that do not set one get this."""


def _check(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor) -> None:
    """Shapes must agree and ``known`` must be a mask: a wrong call should fail, not mislearn."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, C]; got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape or known.shape != logits.shape:
        raise ValueError(
            f"logits, targets and known must have the same shape; got {tuple(logits.shape)}, "
            f"{tuple(targets.shape)}, {tuple(known.shape)}"
        )
    if known.dtype != torch.bool:
        raise ValueError(f"known must be a bool tensor; got {known.dtype}")
    bad = known & ~((targets >= 0) & (targets <= 1))
    if bool(bad.any()):
        value = targets[bad][0].item()
        raise ValueError(f"known targets must lie in [0, 1]; found {value}")


def _reduce(per_entry: torch.Tensor, known: torch.Tensor, reduction: str) -> torch.Tensor:
    """Sum of known entries, or its mean over the number of known entries (0 when none)."""
    total = torch.where(known, per_entry, torch.zeros_like(per_entry)).sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / known.sum().clamp(min=1)
    raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")


def _safe(logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor):
    """Logits 0 and targets 0 at unknown entries, so no inf/NaN can reach the arithmetic."""
    zero = torch.zeros((), dtype=logits.dtype, device=logits.device)
    return torch.where(known, logits, zero), torch.where(known, targets.to(logits.dtype), zero)


def partial_bce(
    logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Binary cross-entropy with logits over the known entries (mean over known by default)."""
    _check(logits, targets, known)
    x, y = _safe(logits, targets, known)
    per_entry = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    return _reduce(per_entry, known, reduction)


def partial_asl(
    logits: torch.Tensor,
    targets: torch.Tensor,
    known: torch.Tensor,
    gamma_pos: float = 1.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    reduction: str = "mean",
    soft_focusing: str = "per_term",
) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al. 2021) over the known entries.

    Per entry, with ``p = sigmoid(logit)`` and the shifted probability ``p_m = max(p - clip, 0)``:
    ``-[y (1-p)^gamma_pos log p + (1-y) p_m^gamma_neg log(1-p_m)]``. The focusing weights
    carry no gradient (METHODS.md), as in the reference code: ASL's ``AsymmetricLoss`` (and
    DualCoOp's copy of it) computes them under ``torch.set_grad_enabled(False)``, its default
    ``disable_torch_grad_focal_loss=True``.

    The two forms differ only for a soft target ``0 < y < 1`` (DSRB's blended entries):
    ``soft_focusing="per_term"`` gives each term its own weight, as above; ``"mixed"`` is what
    the ASL code computes for a soft y, one weight ``(1 - p_t)^(gamma_pos y + gamma_neg (1-y))``
    with ``p_t = y p + (1-y)(1-p_m)`` on the whole mixed term. As in the reference, the
    log-probabilities are floored at ``log(eps)`` (``eps=0``: no floor); they are computed with
    log-sigmoid, so the floor is the only approximation.
    """
    _check(logits, targets, known)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    if soft_focusing not in SOFT_FOCUSING:
        raise ValueError(f"soft_focusing must be one of {SOFT_FOCUSING}; got {soft_focusing!r}")
    if not 0 <= clip < 1:
        raise ValueError(f"clip must be in [0, 1); got {clip}")
    x, y = _safe(logits, targets, known)
    log_p = F.logsigmoid(x)
    if clip > 0:
        # 1 - p_m = min(1 - p + clip, 1) >= clip, so the log is finite.
        log_not_pm = torch.log((torch.sigmoid(-x) + clip).clamp(max=1))
    else:
        log_not_pm = F.logsigmoid(-x)
    if eps > 0:
        floor = math.log(eps)
        log_p, log_not_pm = log_p.clamp(min=floor), log_not_pm.clamp(min=floor)
    with torch.no_grad():
        p = torch.sigmoid(x)
        p_m = (p - clip).clamp(min=0)
        if soft_focusing == "mixed":
            p_t = y * p + (1 - y) * (1 - p_m)
            weight = (1 - p_t).pow(gamma_pos * y + gamma_neg * (1 - y))
            w_pos = w_neg = weight
        else:
            w_pos = (1 - p).pow(gamma_pos)
            w_neg = p_m.pow(gamma_neg)
    per_entry = -(y * w_pos * log_p + (1 - y) * w_neg * log_not_pm)
    return _reduce(per_entry, known, reduction)


def partial_ranking(
    logits: torch.Tensor, targets: torch.Tensor, known: torch.Tensor, margin: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """Pairwise ranking loss over classes (TaI-DPT, METHODS §12): within each image, every known
    positive should score at least ``margin`` above every known negative,

        L_b = Σ_{i, j} y_i (1 − y_j) · max(0, margin − s_i + s_j)   over known i, j,

    which also weighs soft targets. ``reduction="mean"`` averages L_b over the images of the
    batch (as the reference code), ``"sum"`` adds them up.
    """
    _check(logits, targets, known)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; got {reduction!r}")
    x, y = _safe(logits, targets, known)
    positive = y * known
    negative = (1 - y) * known
    hinge = (margin - x[:, :, None] + x[:, None, :]).clamp(min=0)  # [B, i, j]
    per_image = (positive[:, :, None] * negative[:, None, :] * hinge).sum(dim=(1, 2))
    return per_image.sum() if reduction == "sum" else per_image.mean()


LOSSES: Dict[str, Callable[..., torch.Tensor]] = {
    "bce": partial_bce,
    "asl": partial_asl,
    "ranking": partial_ranking,
}


def build_loss(name: str, **kwargs: Any) -> Callable[..., torch.Tensor]:
    """The loss called ``name`` with its keyword settings bound (e.g. from a config section).

    Settings are checked here, not at the first training step: an unknown name or keyword
    raises ``ConfigError`` naming it.
    """
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    fn = LOSSES[name]
    accepted = set(inspect.signature(fn).parameters)
    accepted -= {"logits", "targets", "known"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"loss {name!r} does not take {unknown}; it takes {sorted(accepted)}")
    reduction = kwargs.get("reduction", "mean")
    if reduction not in REDUCTIONS:
        raise ConfigError(f"loss reduction must be one of {REDUCTIONS}; got {reduction!r}")
    if kwargs.get("soft_focusing", "per_term") not in SOFT_FOCUSING:
        raise ConfigError(f"loss.soft_focusing must be one of {SOFT_FOCUSING}; got {kwargs['soft_focusing']!r}")
    return functools.partial(fn, **kwargs)
