"""Dense maps of ViT towers that localise: the last block's patch outputs by a training-free recipe.

In a CLIP ViT the last attention block mixes every patch with every other one, so the patch
tokens after it (METHODS §1, mode ``tokens``) are poorly localised. The published fixes change
only what the last block computes for the patches; the blocks before it, `ln_post` and the
projection stay. Notation for the last block of a pre-norm ViT, x its input [L = 1 + N tokens]:

    h = ln_1(x);  q, k, v = the block's own query, key and value projections of h (biases included)
    A(a, b) = softmax(a bᵀ / sqrt(d)) per head (d: head width), over all L tokens (class included)
    library:  y = x + ls_1(out_proj(A(q, k) v));  out = y + ls_2(mlp(ln_2(y)))

The modes give, for each patch j (the class token and the global feature are never changed):

- ``tokens``: the library's block as it is (METHODS §1).
- ``value`` (MaskCLIP, Zhou et al., ECCV 2022; reference code ``mmseg/models/backbones/vit.py``,
  ``return_qkv``): the attention output of each patch is replaced by its own value vector, the
  rest of the block is kept: ``y_j = x_j + ls_1(out_proj(v_j))``, ``out_j = y_j + ls_2(mlp(ln_2(y_j)))``.
- ``sclip`` (SCLIP's correlative self-attention, Wang et al., ECCV 2024; reference code
  ``clip/model.py``, ``custom_attn(csa=True)``): query-query plus key-key attention, the residual
  and the MLP kept: ``y_j = x_j + ls_1(out_proj([A(q, q) + A(k, k)] v)_j)``, ``out_j`` as above.
  Each attention row sums to 2, as in the reference.
- ``clearclip`` (ClearCLIP, Lan et al., ECCV 2024; reference code ``open_clip/transformer.py``,
  ``model_type='ClearCLIP'``, ``ignore_residual=True``): query-query attention, without the
  residual and without the MLP: ``out_j = ls_1(out_proj(A(q, q) v)_j)``.

``ls_1``/``ls_2`` are the block's layer scales (identity in CLIP models; transformers has none).
Each adapter then applies its `ln_post` and projection to ``out_j``, as for ``tokens``.

Cost: the class token's (or, for average-pooled towers, every token's) library output is
computed from the same q, k, v as the mode's patch outputs, so a mode costs about one block,
like ``tokens``; an average-pooled tower needs every token's library output, so there ``value``
and ``sclip`` run the MLP twice over the patches.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F

from clipml.errors import BackboneError

DENSE_MODES = ("tokens", "value", "sclip", "clearclip")

Tensor = torch.Tensor


def _identity(x: Tensor) -> Tensor:
    return x


@dataclasses.dataclass(frozen=True)
class LastBlock:
    """The last pre-norm transformer block of a ViT, as calls into the library's own modules."""

    ln_1: Callable[[Tensor], Tensor]
    qkv: Callable[[Tensor], Tuple[Tensor, Tensor, Tensor]]  # h [B, L, W] -> q, k, v [B, L, W]
    out_proj: Callable[[Tensor], Tensor]
    ln_2: Callable[[Tensor], Tensor]
    mlp: Callable[[Tensor], Tensor]
    heads: int
    ls_1: Callable[[Tensor], Tensor] = _identity
    ls_2: Callable[[Tensor], Tensor] = _identity

    def split(self, t: Tensor) -> Tensor:
        """[B, L, W] -> [B, heads, L, W / heads]."""
        batch, length, width = t.shape
        return t.reshape(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def finish(self, x: Tensor, attended: Tensor) -> Tensor:
        """The block's residual and MLP around an attention output (after out_proj)."""
        y = x + self.ls_1(attended)
        return y + self.ls_2(self.mlp(self.ln_2(y)))


def mix(queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """softmax(queries keysᵀ / sqrt(d)) values per head, heads merged: [B, rows, W]."""
    return F.scaled_dot_product_attention(queries, keys, values).transpose(1, 2).flatten(2)


def check_mode(mode: str) -> str:
    if mode not in DENSE_MODES:
        raise BackboneError(f"unknown dense mode {mode!r}: expected one of {', '.join(DENSE_MODES)}")
    return mode


# The modes: the last block's output for the patches x [B, N, W], given q, k, v [B, heads, L, d]
# of all L tokens (the class token first).
def value_path(block: LastBlock, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """MaskCLIP: each patch's own value vector instead of its attention output."""
    return block.finish(x, block.out_proj(v[:, :, 1:].transpose(1, 2).flatten(2)))


def sclip_attention(block: LastBlock, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """SCLIP: softmax(q qᵀ) + softmax(k kᵀ) attention, residual and MLP kept."""
    return block.finish(x, block.out_proj(mix(q[:, :, 1:], q, v) + mix(k[:, :, 1:], k, v)))


def clearclip_attention(block: LastBlock, x: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """ClearCLIP: softmax(q qᵀ) attention, no residual, no MLP."""
    return block.ls_1(block.out_proj(mix(q[:, :, 1:], q, v)))


MODE_FUNCTIONS: Dict[str, Callable[..., Tensor]] = {
    "value": value_path,
    "sclip": sclip_attention,
    "clearclip": clearclip_attention,
}


def last_block(block: LastBlock, x: Tensor, mode: str, rows: int) -> Tuple[Tensor, Tensor]:
    """(the library's output for the first `rows` tokens [B, rows, W], the mode's patch outputs [B, N, W]).

    `x` [B, L, W] is the input of the last block. `rows` is 1 when the global feature reads the
    class token, L when it averages every patch.
    """
    q, k, v = (block.split(t) for t in block.qkv(block.ln_1(x)))
    library = block.finish(x[:, :rows], block.out_proj(mix(q[:, :, :rows], k, v)))
    return library, MODE_FUNCTIONS[mode](block, x[:, 1:], q, k, v)
