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

from clipml.backbones.config import BackboneConfig
from clipml.backbones.vit_dense import DENSE_MODES, check_mode
from clipml.errors import BackboneError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
RESIZE_MODES = ("bicubic", "bicubic_antialias")
PLACEHOLDERS = ("X", "x", "*", "#", "a")  # context-slot words tried in turn (CoOp's is "X")


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """How a tower's images are prepared, read from its library's own preprocessing config.

    clipml resizes both sides to `size` (no crop: a crop would cut away objects at the borders of
    multi-label images) with the library's kernel `interpolation`, antialiased, then normalises by
    `mean` and `std`. `library_resize_mode` records what the library itself does to the shape (not
    applied): "shortest" (shortest side to size, then centre crop: open_clip's default and
    transformers' CLIP), "squash" (both sides, as clipml), "longest" (longest side, then pad) or
    "naflex" (SigLIP 2 NaFlex: the patch budget at the image's aspect ratio)."""

    size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    interpolation: str = "bicubic"
    library_resize_mode: str = "shortest"


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
    interpolation: str = "bicubic"  # the library's resize kernel, which clipml's transforms use
    library_resize_mode: str = "shortest"  # the library's resize mode (recorded only, see ImagePreprocess)

    def __init__(self, config: Optional[BackboneConfig] = None) -> None:
        super().__init__()
        config = config or BackboneConfig()
        if config.precision not in ("fp32", "bf16"):
            raise BackboneError(f"backbone.precision must be 'fp32' or 'bf16', got {config.precision!r}")
        if config.pos_embed_resize not in RESIZE_MODES:
            raise BackboneError(f"backbone.pos_embed_resize must be one of {RESIZE_MODES}, "
                                f"got {config.pos_embed_resize!r}")
        self.config = config
        self.precision = config.precision
        self.pos_embed_resize = config.pos_embed_resize
        self.dense = check_mode(config.dense)  # how a ViT tower computes its dense map (vit_dense.py)
        # A ModifiedResNet's attention pool adds its positional embedding to the layer-4 map
        # (CLIP); False leaves it out of the pooled feature and the dense map (TaI-DPT's test-time
        # features). Only the ResNet adapter, which alone has the pool, accepts False.
        self.attnpool_positional = bool(config.attnpool_positional)
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
    def preprocess(self) -> ImagePreprocess:
        """How this tower's images are resized and normalised (see ImagePreprocess)."""
        return ImagePreprocess(self.image_size, tuple(self.mean), tuple(self.std), self.interpolation,
                               self.library_resize_mode)

    @property
    def identity(self) -> Dict[str, object]:
        """Library, model, weights, image size and width: what a checkpoint is checked against
        and a feature cache is keyed by. A positional embedding resized with the non-default
        kernel adds `pos_embed_resize` (features differ slightly); an image resize kernel other
        than bicubic adds `interpolation`; a ViT dense mode other than "tokens" adds `dense`, a
        ResNet pool without its positional embedding adds `attnpool_positional: False` (so
        identities, caches and checkpoints from before stay valid)."""
        identity = dict(self._identity, image_size=self.image_size, embed_dim=self.embed_dim)
        if self.interpolation != FrozenCLIP.interpolation:
            identity["interpolation"] = self.interpolation
        if self.pos_embed_resize != RESIZE_MODES[0] and getattr(self, "_resized", False):
            identity["pos_embed_resize"] = self.pos_embed_resize
        if self.dense != DENSE_MODES[0]:
            identity["dense"] = self.dense
        if not self.attnpool_positional:
            identity["attnpool_positional"] = False
        return identity

    def _resize(self, embedding: torch.Tensor, new_grid: Tuple[int, int], extra_tokens: int = 1) -> torch.Tensor:
        """`embedding` resized to `new_grid` with this backbone's kernel (remembered for the identity);
        its first `extra_tokens` rows (class tokens) are kept."""
        resized = resize_grid_embedding(embedding, new_grid, extra_tokens,
                                        antialias=self.pos_embed_resize == "bicubic_antialias")
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

    # Text: ids, where each text's feature is read, and what may be cut -----------------------
    end_token_id: int  # the tokenizer's end-of-text id
    leading_tokens: int = 1  # tokens before a text's first word (CLIP's start token)
    zero_shot_rule: str = "softmax"  # how zero-shot logits become probabilities (`zero_shot_probabilities`)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [T, context_length], as the family's own tokenizer pads them."""
        raise NotImplementedError

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def text_lengths(self, ids: torch.Tensor) -> torch.Tensor:
        """Real tokens of each text [T]: up to and including its first end-of-text token."""
        is_end = ids == self.end_token_id
        if not bool(is_end.any(dim=-1).all()):
            raise BackboneError(f"a text has no end-of-text token (id {self.end_token_id}) within "
                                f"{ids.shape[1]} tokens")
        return is_end.int().argmax(dim=-1) + 1

    def pooled_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """The position whose state becomes each text's feature [T]: CLIP's end-of-text token."""
        return self.text_lengths(ids) - 1

    @property
    def truncatable(self) -> bool:
        """Whether positions after every text's end token may be cut from the ids: true where a
        causal mask keeps later positions from the pooled one (CLIP's text towers)."""
        return True

    def text_ids(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids of `texts` on the device, cut after the longest text where `truncatable`."""
        ids = self.tokenize(texts).to(self.device)
        if not self.truncatable:
            return ids
        return ids[:, : int(self.text_lengths(ids).max())]

    def word_ids(self, text: str) -> torch.Tensor:
        """The ids of a text's own words [K]: no start, end or padding token."""
        ids = self.tokenize([text])
        end = int(self.text_lengths(ids)[0]) - 1  # the end-of-text token
        return ids[0, self.leading_tokens : end]

    def context_prompt_ids(self, classnames: Sequence[str], n_ctx: int) -> Tuple[torch.Tensor, slice]:
        """Ids of ``X..X <class>.`` prompts and the positions of the n_ctx placeholders, which
        learned context vectors replace (CoOp's prompt form). The placeholder is the first of
        PLACEHOLDERS that this tokenizer turns into one token per context slot (tokenizers without a
        word marker before the first word, Gemma's, give the first slot another id than the others)."""
        context = slice(self.leading_tokens, self.leading_tokens + n_ctx)
        room = f"the tower's prompts hold {self.context_length} tokens, {self.leading_tokens} before the contexts"
        if context.stop >= self.context_length:  # no position left for the class name
            raise BackboneError(f"{type(self).__name__}: model.n_ctx={n_ctx} learned contexts leave no room for the "
                                f"class name ({room}): lower model.n_ctx")
        for word in PLACEHOLDERS:
            placeholders = " ".join([word] * n_ctx)
            expected = self.word_ids(placeholders)
            if len(expected) != n_ctx:
                continue
            ids = self.text_ids([f"{placeholders} {name}." for name in classnames])
            if bool((ids[:, context] == expected.to(ids.device)).all()):
                self._check_not_cut(ids, classnames, n_ctx, room)
                return ids, context
        crowded = f" ({room}: a lower model.n_ctx may leave the class name room)" \
            if context.stop + 3 > self.context_length else ""
        raise BackboneError(f"{type(self).__name__}: none of the prompt placeholders {PLACEHOLDERS} takes one token "
                            f"per context slot at positions {context.start}..{context.stop - 1}{crowded}")

    def _check_not_cut(self, ids: torch.Tensor, classnames: Sequence[str], n_ctx: int, room: str) -> None:
        """A prompt that fills every position may have lost the end of its class name to the
        tokenizer's truncation (tokenizers cut silently): refused, naming the first such class."""
        is_end = ids == self.end_token_id
        full = ~is_end.any(dim=-1) | (is_end.int().argmax(dim=-1) + 1 >= self.context_length)
        if bool(full.any()):
            name = classnames[int(full.int().argmax())]
            raise BackboneError(f"{type(self).__name__}: the prompt of class {name!r} with model.n_ctx={n_ctx} learned "
                                f"contexts fills all the tower's positions and may be cut ({room}): lower "
                                "model.n_ctx or shorten the class name")

    def encode_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Text features [T, D] from token embeddings [T, L, W] of prompts whose ids are [T, L].

        `ids` locate the pooled token (`pooled_positions`); L may be shorter than the context
        length where the tower is `truncatable` (ids from `text_ids`).
        """
        raise NotImplementedError

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        ids = self.text_ids(texts)
        return self.encode_embeddings(self.token_embedding(ids), ids)

    def encode_text_dense(self, texts: Sequence[str]) -> TextDense:
        """Per-token text features and the global one (= `encode_text`) in one pass of the tower."""
        ids = self.text_ids(texts)
        tokens, pooled = self.encode_text_tokens(self.token_embedding(ids), ids)
        positions = torch.arange(ids.shape[1], device=ids.device)
        mask = positions[None, :] < self.text_lengths(ids)[:, None]
        return TextDense(tokens=tokens, pooled=pooled, grid=(1, ids.shape[1]), mask=mask)

    def encode_text_tokens(self, embeddings: torch.Tensor, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(per-token features [T, L, D], text features [T, D]) from token embeddings, as
        `encode_embeddings` computes the latter."""
        raise NotImplementedError

    # Scoring: the tower's own logit scale and bias, and its zero-shot probability ----------
    @property
    def logit_scale(self) -> float:
        """The scale the tower was trained with on cosine similarities (CLIP: exp of its learned
        log scale, 100 for OpenAI's weights)."""
        raise NotImplementedError

    @property
    def logit_bias(self) -> Optional[float]:
        """The tower's learned logit bias (sigmoid-trained models), None for CLIP's softmax."""
        return None

    def zero_shot_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities [B, C] from zero-shot logits, by the rule the tower was trained
        with: a softmax over the classes (CLIP's contrastive loss: its sigmoids saturate at a
        scale of 100), or each class's sigmoid (sigmoid-loss towers)."""
        if self.zero_shot_rule == "sigmoid":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=-1)


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
