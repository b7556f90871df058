"""The frozen-CLIP protocol every backbone adapter implements, and the shared freezing rules."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipml.backbones.vit_dense import DENSE_MODES, check_mode
from clipml.errors import BackboneError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
RESIZE_MODES = ("bicubic", "bicubic_antialias")


@dataclasses.dataclass
class Dense:
    """Output of `encode_dense`: per-location features in the joint space and the global one."""

    tokens: torch.Tensor  # [B, N, D], N = h * w, row-major over the grid
    pooled: torch.Tensor  # [B, D], what the library's encode_image returns (attnpool_positional: see FrozenCLIP)
    grid: Tuple[int, int]  # (h, w)


@dataclasses.dataclass
class TextDense(Dense):
    """Output of `encode_text_dense`: texts standing in for images (TaI-DPT, METHODS §12).

    `tokens` are the text transformer's per-token outputs after its final layer norm and the text
    projection, `pooled` is exactly `encode_text`, `grid` is (1, L) and `mask` [B, L] marks each
    text's real tokens (start token to end token); positions after the end token are padding."""

    mask: Optional[torch.Tensor] = None


class FrozenCLIP(nn.Module):
    """A CLIP model whose every weight is frozen and which always runs in eval mode.

    Subclasses wrap one library's model and implement the encoders; everything trainable in
    clipml lives outside this module, so its parameters never reach an optimizer.
    """

    embed_dim: int
    image_size: int
    context_length: int
    mean: Tuple[float, float, float] = OPENAI_MEAN
    std: Tuple[float, float, float] = OPENAI_STD

    def __init__(self, precision: str = "fp32", pos_embed_resize: str = "bicubic", dense: str = "tokens") -> None:
        super().__init__()
        if precision not in ("fp32", "bf16"):
            raise BackboneError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if pos_embed_resize not in RESIZE_MODES:
            raise BackboneError(f"pos_embed_resize must be one of {RESIZE_MODES}, got {pos_embed_resize!r}")
        self.precision = precision
        self.pos_embed_resize = pos_embed_resize
        self.dense = check_mode(dense)  # how a ViT tower computes its dense map (vit_dense.py)
        # A ModifiedResNet's attention pool adds its positional embedding to the layer-4 map
        # (CLIP); False leaves it out of the pooled feature and the dense map (TaI-DPT's test-time
        # features). Set by the ResNet adapter, which alone has the pool.
        self.attnpool_positional = True
        self._identity: Dict[str, object] = {}

    def freeze(self) -> None:
        """Freeze every parameter (logit scale included) and switch to eval mode for good."""
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenCLIP":
        # Batch-norm statistics and dropout of a frozen tower must never change.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def identity(self) -> Dict[str, object]:
        """Library, model, weights, image size and width: what a checkpoint is checked against
        and a feature cache is keyed by. A positional embedding resized with the non-default
        kernel adds `pos_embed_resize` (features differ slightly); a ViT dense mode other than
        "tokens" adds `dense`, a ResNet pool without its positional embedding adds
        `attnpool_positional: False` (so identities, caches and checkpoints from before stay valid)."""
        identity = dict(self._identity, image_size=self.image_size, embed_dim=self.embed_dim)
        if self.pos_embed_resize != RESIZE_MODES[0] and getattr(self, "_resized", False):
            identity["pos_embed_resize"] = self.pos_embed_resize
        if self.dense != DENSE_MODES[0]:
            identity["dense"] = self.dense
        if not self.attnpool_positional:
            identity["attnpool_positional"] = False
        return identity

    def _resize(self, embedding: torch.Tensor, new_grid: Tuple[int, int]) -> torch.Tensor:
        """`embedding` resized to `new_grid` with this backbone's kernel (remembered for the identity)."""
        resized = resize_grid_embedding(embedding, new_grid, antialias=self.pos_embed_resize == "bicubic_antialias")
        self._resized = getattr(self, "_resized", False) or resized is not embedding
        return resized

    def autocast(self):
        """bf16 autocast on CUDA when asked for; fp32 everywhere else."""
        if self.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # The protocol -------------------------------------------------------------------------
    def encode_dense(self, images: torch.Tensor) -> Dense:
        raise NotImplementedError

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_dense(images).pooled

    @property
    def has_attention_pool(self) -> bool:
        """Whether the image tower ends in CLIP's attention pool (ModifiedResNet), whose input
        sequence starts with a mean token (`attention_pool_mean_token`)."""
        return False

    def attention_pool_mean_token(self, tokens: torch.Tensor) -> torch.Tensor:
        """The attention pool's mean token through the same value and output projections as the
        dense `tokens` [B, N, D] of `encode_dense`: [B, D] (DualCoOp's code aggregates over it too)."""
        raise NotImplementedError(f"{type(self).__name__} has no attention pool")

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Text features [T, D] from token embeddings [T, L, W] of prompts whose ids are [T, L].

        `ids` locate the end-of-text token; L may be shorter than the context length (the
        causal mask makes features at the end token independent of what follows it).
        """
        raise NotImplementedError

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        ids = self._text_ids(texts)
        return self.encode_embeddings(self.token_embedding(ids), ids)

    def end_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Position of each text's end token [T]: CLIP's end token has the largest id."""
        return ids.argmax(dim=-1)

    def _text_ids(self, texts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenize(texts).to(self.device)
        # Nothing after the last end token reaches any real token's feature (causal mask): cut there.
        return ids[:, : int(self.end_positions(ids).max()) + 1]

    def encode_text_dense(self, texts: Sequence[str]) -> TextDense:
        """Per-token text features and the global one (= `encode_text`) in one pass of the tower."""
        ids = self._text_ids(texts)
        tokens, pooled = self.encode_text_tokens(self.token_embedding(ids), ids)
        positions = torch.arange(ids.shape[1], device=ids.device)
        mask = positions[None, :] <= self.end_positions(ids)[:, None]
        return TextDense(tokens=tokens, pooled=pooled, grid=(1, ids.shape[1]), mask=mask)

    def encode_text_tokens(self, embeddings: torch.Tensor, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(per-token features [T, L, D], text features [T, D]) from token embeddings, as
        `encode_embeddings` computes the latter."""
        raise NotImplementedError


def check_image_size(image_size: int, stride: int, what: str) -> Tuple[int, int]:
    """The feature grid of a square image; the size must be a multiple of the tower's stride."""
    if image_size <= 0 or image_size % stride:
        raise BackboneError(
            f"image size {image_size} does not fit {what}: it must be a positive multiple of {stride}"
        )
    side = image_size // stride
    return side, side


def file_digest(path: Path) -> str:
    """Short sha256 of a weights file: the backbone identity stored with checkpoints."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def folder_digest(folder: Path) -> str:
    """Short sha256 over the weight files directly in `folder` (by name order): the identity of
    a transformers model folder, so other weights under the same folder name are told apart."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise BackboneError(f"no weight file ({', '.join(WEIGHT_SUFFIXES)}) in the model folder {folder}")
    return hashlib.sha256("".join(file_digest(p) for p in files).encode()).hexdigest()[:16]


def resize_grid_embedding(
    embedding: torch.Tensor, new_grid: Tuple[int, int], extra_tokens: int = 1, antialias: bool = False
) -> torch.Tensor:
    """Bicubic resize of a positional embedding [extra + h*w, W] to a new square-ish grid.

    `antialias=False` is torch's plain bicubic (a = -0.75), as transformers'
    `interpolate_pos_encoding`; `antialias=True` is what open_clip's `resize_pos_embed` does for
    `create_model(force_image_size=...)` (Pillow's bicubic kernel, a = -0.5, which differs even
    when enlarging). The extra (class) tokens are kept as they are.
    """
    extra, spatial = embedding[:extra_tokens], embedding[extra_tokens:]
    side = int(round(math.sqrt(spatial.shape[0])))
    if side * side != spatial.shape[0]:
        raise BackboneError(f"positional embedding of {spatial.shape[0]} locations is not a square grid")
    if (side, side) == tuple(new_grid):
        return embedding
    grid = spatial.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=antialias)
    spatial = grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(embedding.dtype)
    return torch.cat([extra, spatial], dim=0)


def causal_mask(length: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive causal mask [L, L]: -inf above the diagonal."""
    return torch.full((length, length), float("-inf"), device=device, dtype=dtype).triu_(1)


def trainable_parameters(module: nn.Module) -> List[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]
