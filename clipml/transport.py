"""Conditional-transport (CT) alignment between an image's dense features and its labels (METHODS.md §7).

For image b with locations j (features z_j) and label set S_b (text features t_c), the cost is
``c_jc = 1 - cos(z_j, t_c)`` and two navigators are softmaxes of ``cos / tau_nav`` plus the log
of the marginal weights along each axis:

    pi_fwd(c | j) = softmax over c in S_b  of  cos(z_j, t_c) / tau_nav + log v_c   (location -> label)
    pi_bwd(j | c) = softmax over locations of  cos(z_j, t_c) / tau_nav + log w_j   (label -> location)
    L_b = rho * sum_j w_j sum_c pi_fwd(c|j) c_jc + (1 - rho) * sum_c v_c sum_j pi_bwd(j|c) c_jc

with w (locations) and v (labels) normalised to sum to 1 per image; uniform by default, so the
outer sums are plain means over locations and over S_b. Choices made here, each documented
where it is implemented:

- S_b holds the **known positives**: ``known & (targets >= 0.5)``. A soft target from blending
  counts only when it is >= 0.5; unknown entries never count, whatever their target.
- With ``background=True`` a learnable vector joins S_b of every image that has a known
  positive, as one more label (it takes part in both directions and in the mean over labels),
  so locations that match no annotated label have somewhere cheap to go.
- Images whose S_b is empty (or whose location weights are all zero) contribute nothing; the
  loss is the mean over contributing images, and 0 (graph intact) when none contributes.
- Gradients flow through costs *and* navigators (as in PatchCT / SCT), into ``dense``,
  ``text`` and the background vector.

Everything is batched with masks (no loop over images or classes): features that take part in
no pair are zeroed with ``torch.where`` before any arithmetic and excluded pairs get navigator
weight exactly 0, so they change neither the loss nor any gradient (theirs is exactly 0), even
when they hold inf or NaN.
"""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipml.errors import ConfigError

# Navigator temperature: the same kind of softmax over locations of cos(z_j, t_c) as DualCoOp's
# spatial aggregation (METHODS.md §4, scale 20 = 1 / 0.05), which is known to give peaked but
# not one-hot maps on CLIP dense features, whose cosines to text lie in a narrow band.
DEFAULT_TAU_NAV = 0.05


@dataclass
class TransportTerms:
    """Per-image CT terms, before rho mixing: useful for logging the two directions apart."""

    forward: Tensor  # [B] location -> label transport cost (0 where not contributing)
    backward: Tensor  # [B] label -> location transport cost (0 where not contributing)
    contributing: Tensor  # [B] bool: image has a known positive and a location of weight > 0


def _masked_softmax(logits: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Softmax over the entries of ``mask`` along ``dim``; 0 elsewhere, rows fully masked give 0.

    Excluded entries get the dtype's lowest finite value rather than -inf: their exp is still
    exactly 0 next to any kept entry, and a fully masked row becomes a harmless uniform softmax
    that the final ``where`` zeroes (a row of -inf would be NaN, and NaN times 0 stays NaN, in
    the value and in the gradient).
    """
    filled = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    probs = torch.softmax(filled, dim=dim)
    return torch.where(mask, probs, torch.zeros((), dtype=probs.dtype, device=probs.device))


def _normalised_weights(weights: Tensor, mask: Tensor, dim: int) -> Tensor:
    """Weights restricted to ``mask`` and normalised to sum 1 along ``dim`` (0 where none kept)."""
    kept = torch.where(mask, weights, torch.zeros((), dtype=weights.dtype, device=weights.device))
    total = kept.sum(dim=dim, keepdim=True)
    return kept / torch.where(total > 0, total, torch.ones_like(total))


def _check_weights(
    name: str, weights: Tensor, shape: Tuple[int, ...], where: Optional[Tensor] = None
) -> None:
    """Marginal weights must match in shape and be finite and >= 0 where they are used."""
    if tuple(weights.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}; got {tuple(weights.shape)}")
    used = weights if where is None else weights[where]
    bad = ~torch.isfinite(used) | (used < 0)
    if bool(bad.any()):
        raise ValueError(f"{name} must be finite and >= 0; found {used[bad][0].item()}")


def transport_terms(
    dense: Tensor,
    text: Tensor,
    targets: Tensor,
    known: Tensor,
    tau_nav: float = DEFAULT_TAU_NAV,
    background: Optional[Tensor] = None,
    location_weights: Optional[Tensor] = None,
    label_weights: Optional[Tensor] = None,
) -> TransportTerms:
    """The forward and backward CT terms of every image (see the module docstring).

    ``dense [B, N, D]``, ``text [C, D]``, ``targets [B, C]`` in [0, 1], ``known [B, C]`` bool,
    ``background [D]`` or None. ``location_weights [B, N]`` and ``label_weights [B, C]`` are
    non-negative marginal weights, normalised per image here; a zero weight excludes the
    location or label. The background's weight is the mean weight of the image's labels (1
    when label weights are uniform), i.e. it counts as one more label of average weight.
    Computed in at least float32 (1 / tau_nav scales the softmax logits).
    """
    if dense.dim() != 3 or text.dim() != 2 or dense.shape[-1] != text.shape[-1]:
        raise ValueError(
            f"dense must be [B, N, D] and text [C, D] with the same D; got "
            f"{tuple(dense.shape)} and {tuple(text.shape)}"
        )
    b, n, _ = dense.shape
    c = text.shape[0]
    if tuple(targets.shape) != (b, c) or tuple(known.shape) != (b, c):
        raise ValueError(
            f"targets and known must be [B, C] = {(b, c)}; got {tuple(targets.shape)} and "
            f"{tuple(known.shape)}"
        )
    if known.dtype != torch.bool:
        raise ValueError(f"known must be a bool tensor; got {known.dtype}")
    bad = known & ~((targets >= 0) & (targets <= 1))
    if bool(bad.any()):
        raise ValueError(f"known targets must lie in [0, 1]; found {targets[bad][0].item()}")
    if tau_nav <= 0:
        raise ValueError(f"tau_nav must be > 0; got {tau_nav}")
    dtype = torch.promote_types(torch.promote_types(dense.dtype, text.dtype), torch.float32)

    # Label set: known positives (a soft target counts from 0.5 on) with a positive weight.
    labels = known & (targets >= 0.5)
    if label_weights is not None:
        _check_weights("label_weights", label_weights, (b, c), labels)
        label_w = torch.where(labels, label_weights.to(dtype), torch.zeros((), dtype=dtype))
        labels = labels & (label_w > 0)
    else:
        label_w = labels.to(dtype)
    if location_weights is not None:
        _check_weights("location_weights", location_weights, (b, n))
        loc_w = location_weights.to(dtype)
        locations = loc_w > 0
    else:
        loc_w = torch.ones(b, n, dtype=dtype, device=dense.device)
        locations = torch.ones(b, n, dtype=torch.bool, device=dense.device)
    has_label = labels.any(dim=1)

    targets_t = text.to(dtype)
    if background is not None:
        if tuple(background.shape) != (text.shape[-1],):
            raise ValueError(
                f"background must be [D] = ({text.shape[-1]},); got {tuple(background.shape)}"
            )
        targets_t = torch.cat([targets_t, background.to(dtype)[None]], dim=0)
        bg_w = label_w.sum(dim=1) / labels.sum(dim=1).clamp(min=1)
        label_w = torch.cat([label_w, bg_w[:, None]], dim=1)
        labels = torch.cat([labels, has_label[:, None]], dim=1)

    # Vectors that take part in no pair are zeroed *before* any arithmetic, so their values,
    # even non-finite ones, reach neither the loss nor any gradient, theirs included. Cosines
    # are (dense @ unit text) / |dense|, which spares normalising the big [B, N, D] map.
    zero = torch.zeros((), dtype=dtype, device=dense.device)
    used_loc = locations & has_label[:, None]
    dense = torch.where(used_loc[:, :, None], dense.to(dtype), zero)
    inv_norm = 1.0 / dense.norm(dim=-1).clamp(min=1e-12)
    used_lab = labels.any(dim=0)[:, None]
    t = F.normalize(torch.where(used_lab, targets_t, zero), dim=-1)
    pair = locations[:, :, None] & labels[:, None, :]  # [B, N, C']
    # Finite everywhere; excluded pairs get navigator weight exactly 0, hence no gradient.
    sim = torch.einsum("bnd,cd->bnc", dense, t) * inv_norm[:, :, None]
    cost = 1.0 - sim

    # log of the weights only where they are used (elsewhere the softmax mask takes over).
    log_v = torch.log(torch.where(labels, label_w, torch.ones_like(label_w)))
    log_w = torch.log(torch.where(locations, loc_w, torch.ones_like(loc_w)))
    pi_fwd = _masked_softmax(sim / tau_nav + log_v[:, None, :], pair, dim=2)
    pi_bwd = _masked_softmax(sim / tau_nav + log_w[:, :, None], pair, dim=1)

    v = _normalised_weights(label_w, labels, dim=1)  # [B, C']
    w = _normalised_weights(loc_w, locations, dim=1)  # [B, N]
    forward = ((pi_fwd * cost).sum(dim=2) * w).sum(dim=1)
    backward = ((pi_bwd * cost).sum(dim=1) * v).sum(dim=1)
    return TransportTerms(forward, backward, has_label & locations.any(dim=1))


class ConditionalTransport(nn.Module):
    """CT alignment loss ``L_CT`` (not yet multiplied by lambda_CT), mean over contributing images.

    ``rho`` weighs the forward (location -> label) direction; it defaults small (0.2) because
    with partial labels that direction pulls unannotated objects towards the known labels.
    ``background=True`` adds a learnable target vector (``self.background``, [D]) initialised
    N(0, 1/D), i.e. about unit norm like the text features: only its direction matters to the
    cosine, and a tiny norm would inflate its gradients through the normalisation.
    """

    def __init__(
        self,
        embed_dim: int,
        tau_nav: float = DEFAULT_TAU_NAV,
        rho: float = 0.2,
        background: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim <= 0:
            raise ConfigError(f"transport embed_dim must be > 0; got {embed_dim}")
        if not tau_nav > 0:
            raise ConfigError(f"model.transport.tau_nav must be > 0; got {tau_nav}")
        if not 0.0 <= rho <= 1.0:
            raise ConfigError(f"model.transport.rho must be in [0, 1]; got {rho}")
        self.embed_dim = embed_dim
        self.tau_nav = float(tau_nav)
        self.rho = float(rho)
        self.background: Optional[nn.Parameter] = (
            nn.Parameter(torch.randn(embed_dim) / math.sqrt(embed_dim)) if background else None
        )

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, tau_nav={self.tau_nav}, rho={self.rho}, "
            f"background={self.background is not None}"
        )

    def terms(
        self,
        dense: Tensor,
        text: Tensor,
        targets: Tensor,
        known: Tensor,
        location_weights: Optional[Tensor] = None,
        label_weights: Optional[Tensor] = None,
    ) -> TransportTerms:
        """Per-image forward and backward terms with this module's settings."""
        if dense.shape[-1] != self.embed_dim:
            raise ValueError(
                f"dense features have width {dense.shape[-1]}; this module expects "
                f"embed_dim={self.embed_dim}"
            )
        return transport_terms(
            dense, text, targets, known, self.tau_nav, self.background,
            location_weights, label_weights,
        )

    def forward(
        self,
        dense: Tensor,
        text: Tensor,
        targets: Tensor,
        known: Tensor,
        location_weights: Optional[Tensor] = None,
        label_weights: Optional[Tensor] = None,
    ) -> Tensor:
        """Scalar ``L_CT``: ``rho * forward + (1 - rho) * backward``, mean over contributing images."""
        parts = self.terms(dense, text, targets, known, location_weights, label_weights)
        per_image = self.rho * parts.forward + (1.0 - self.rho) * parts.backward
        per_image = torch.where(parts.contributing, per_image, torch.zeros_like(per_image))
        return per_image.sum() / parts.contributing.sum().clamp(min=1)
