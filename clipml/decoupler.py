"""From a dense feature map to per-class scores: the semantic decoupler (METHODS §3), the
DualCoOp / zero-shot spatial aggregations (METHODS §4) and TaI-DPT's double-grained scores (§12)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


CPU_CHUNK_ELEMENTS = 2**20


class SemanticDecoupler(nn.Module):
    """Semantic-guided spatial attention: one visual feature per class, in the joint space.

        e_cj = P tanh(U z_j ⊙ V x_c) + b,  a_c = softmax_j(e_c),  f_c = Σ_j a_cj z_j

    ``extra_linear=True`` inserts a d×d linear layer ``H`` (with bias) between tanh and P,
    ``e_cj = P H tanh(…)``, as HCP-MLR-PL's SemanticDecoupling (its fc3). Two linear maps in a
    row compute the same family of functions as one; they train differently (initialisation,
    SGD dynamics), so the option exists to reproduce that code, not to add capacity.
    """

    def __init__(self, embed_dim: int, guide_dim: int, hidden_dim: int = 512, class_chunk: Optional[int] = None,
                 init: str = "random", extra_linear: bool = False) -> None:
        super().__init__()
        self.U = nn.Linear(embed_dim, hidden_dim, bias=False)
        self.V = nn.Linear(guide_dim, hidden_dim, bias=False)
        self.H = nn.Linear(hidden_dim, hidden_dim) if extra_linear else None
        self.P = nn.Linear(hidden_dim, 1)
        if init == "uniform":
            # P = 0: every attention map starts uniform, f_c the mean of the dense tokens (for an
            # average-pooled tower, its own global feature), and training can only refine it;
            # P moves first, then U and V receive gradient through it.
            nn.init.zeros_(self.P.weight)
            nn.init.zeros_(self.P.bias)
        elif init != "random":
            raise ValueError(f"decoupler init must be 'random' or 'uniform', got {init!r}")
        # The tanh term is [B, C, N, d]; classes are processed in chunks to bound its memory. None:
        # on CPU, chunks of about 2^20 elements, which stay in cache (2-4x faster than 16 classes
        # at the lab's sizes, benchmarks/bench_decoupler.py); elsewhere 16 classes.
        self.class_chunk = class_chunk

    def _chunk(self, u: torch.Tensor) -> int:
        if self.class_chunk is not None:
            return self.class_chunk
        if u.device.type != "cpu":
            return 16
        return max(1, CPU_CHUNK_ELEMENTS // u.numel())

    def forward(self, dense: torch.Tensor, guidance: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """dense [B, N, D], guidance [C, G] -> features [B, C, D], attention [B, C, N]."""
        u = self.U(dense)  # [B, N, d]
        w = self.V(guidance)  # [C, d]
        scores, step = [], self._chunk(u)
        for start in range(0, w.shape[0], step):
            chunk = w[start : start + step]
            hidden = torch.tanh(u.unsqueeze(1) * chunk[None, :, None, :])  # [B, c, N, d]
            if self.H is not None:
                hidden = self.H(hidden)
            scores.append(self.P(hidden).squeeze(-1))
        attention = torch.cat(scores, dim=1).softmax(dim=-1)
        return torch.einsum("bcn,bnd->bcd", attention, dense), attention


class CosineHead(nn.Module):
    """s_c = τ · cos(f_c, t_c) (+ b): each class scored only against its own text feature.

    The optional learned bias b (SigLIP-style, e.g. init -τ/4) lets a sigmoid loss move all
    logits at once instead of rotating every prompt away from the image features to do so.
    """

    def __init__(self, temperature: float = 100.0, learnable: bool = False, bias: Optional[float] = None,
                 learn_bias: bool = True) -> None:
        super().__init__()
        log_tau = torch.tensor(float(temperature)).log()
        if learnable:
            self.log_temperature = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_temperature", log_tau, persistent=False)
        if bias is None or learn_bias:
            self.bias = None if bias is None else nn.Parameter(torch.tensor(float(bias)))
        else:  # a tower's own bias, kept as it is (zero-shot scoring)
            self.register_buffer("bias", torch.tensor(float(bias)), persistent=False)

    def forward(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """features [B, C, D] (per class) or [B, D] (global), text [C, D] -> logits [B, C]."""
        text = F.normalize(text, dim=-1)
        features = F.normalize(features, dim=-1)
        if features.dim() == 2:
            cosine = features @ text.T
        else:
            cosine = (features * text.unsqueeze(0)).sum(dim=-1)
        logits = self.log_temperature.exp() * cosine
        return logits if self.bias is None else logits + self.bias


def spatial_cosine(dense: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """cos(z_j, t_c) for all locations and classes: [B, C, N]."""
    return torch.einsum("bnd,cd->bcn", F.normalize(dense, dim=-1), F.normalize(text, dim=-1))


def dualcoop_aggregate(
    dense: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
    scale: float = 20.0, spatial_scale: float = 5.0, extra: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """DualCoOp's class-specific region aggregation; returns logits S+ − S− and attention [B, C, N].

    a_cj = softmax_j(scale·cos(z_j, t+_c)), S±_c = spatial_scale Σ_j a_cj · scale·cos(z_j, t±_c).
    `extra` [B, D] (the attention pool's mean token, as DualCoOp's code) joins the N locations in
    the softmax and the sums; the returned attention is then its location part, renormalised.
    """
    tokens = dense if extra is None else torch.cat([extra[:, None, :], dense], dim=1)
    pos = scale * spatial_cosine(tokens, positive)
    neg = scale * spatial_cosine(tokens, negative)
    attention = pos.softmax(dim=-1)
    pos_score = spatial_scale * (attention * pos).sum(dim=-1)
    neg_score = spatial_scale * (attention * neg).sum(dim=-1)
    if extra is not None:
        attention = attention[..., 1:] / attention[..., 1:].sum(dim=-1, keepdim=True)
    return pos_score - neg_score, attention


def dense_pool_scores(dense: torch.Tensor, text: torch.Tensor, temperature: float = 100.0,
                      pool_scale: float = 20.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Zero-shot dense scoring: per-class softmax-weighted pooling of location cosines."""
    cosine = spatial_cosine(dense, text)
    attention = (pool_scale * cosine).softmax(dim=-1)
    return temperature * (attention * cosine).sum(dim=-1), attention


def double_grained_scores(
    pooled: torch.Tensor, dense: torch.Tensor, global_text: torch.Tensor, local_text: torch.Tensor,
    scale: float = 4.0, spatial_scale: float = 40.0, mask: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TaI-DPT: (global logits, local logits, local attention) for images or texts standing in for them.

    global_c = scale·cos(g, t^G_c);  a_cj = softmax_j(spatial_scale·cos(z_j, t^L_c)) over the
    locations (or real tokens: `mask` [B, N]), local_c = Σ_j a_cj · scale·cos(z_j, t^L_c).
    """
    global_logits = scale * (F.normalize(pooled, dim=-1) @ F.normalize(global_text, dim=-1).T)
    cosine = spatial_cosine(dense, local_text)  # [B, C, N]
    weights = spatial_scale * cosine
    if mask is not None:
        weights = weights.masked_fill(~mask[:, None, :], float("-inf"))
    attention = weights.softmax(dim=-1)
    return global_logits, scale * (attention * cosine).sum(dim=-1), attention
