"""transformers `SiglipModel` and `Siglip2Model` (SigLIP, SigLIP 2) behind the FrozenCLIP protocol.

`hf:` specs reach this adapter when the model's config.json says `model_type` "siglip" (SigLIP, and
SigLIP 2's fixed-resolution checkpoints, which transformers builds as SiglipModel) or "siglip2"
(SigLIP 2 NaFlex). What differs from CLIP, and where it is handled here:

- image: no class token; a MAP head (a learned probe attends over the patches, then a layer norm
  and MLP residual) gives the global feature, and nothing projects it further: the head's output is
  the joint space. Dense map: every patch through the head's value and output projections, then
  the head's LN+MLP residual, i.e. the head's output were its probe to attend to that patch alone.
  Before the LN+MLP, the pooled feature is the attention mixture of those value-out vectors.
- input size: SigLIP's positional grid is resized once (bicubic, as its `interpolate_pos_encoding`);
  SigLIP 2 takes patch sequences with their grid (`spatial_shapes`) and resizes its own positional
  grid to it on every call, so a square image of any multiple of the patch size works.
- text: no causal mask and no padding mask (as trained), every text padded on the right to the
  context length (64) and read at the last position, whatever token is there, through the text
  head's linear. The tokenizer's layout is read as for open_clip's SigLIP (TokenizerLayout): one
  saved to pad on the left is refused, not switched, on both paths.
- scoring: the learned logit scale and bias; zero-shot probabilities are per-class sigmoids.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipml.backbones._loading import cause_text, quiet_downloads
from clipml.backbones.base import RESIZE_MODES, Dense, FrozenCLIP, check_image_size
from clipml.backbones.config import BackboneConfig
from clipml.backbones.hf import load_pretrained, pil_resample_name, register_model_type
from clipml.backbones.tokenizer_layout import TokenizerLayout
from clipml.errors import BackboneError


@register_model_type("siglip", "siglip2")
def build_hf_siglip(source: str, config: BackboneConfig) -> "HFSiglipBackbone":
    """A SiglipModel or Siglip2Model (by its config.json) with its tokenizer and image processor."""
    from transformers import AutoModel

    model, weights_id = load_pretrained(AutoModel, source, "SigLIP")
    if weights_id.startswith("hf-hub:"):
        weights_id += "@" + _hub_revision(source)  # the hub commit the weights came from
    location = _location(source)
    return HFSiglipBackbone(model, _load(source, location, "AutoTokenizer"),
                            _load(source, location, "AutoImageProcessor"), source, weights_id, config)


def _hub_revision(source: str) -> str:
    """The commit of the hub snapshot a model was read from (its cached config.json's folder)."""
    from huggingface_hub import hf_hub_download
    from transformers.utils.hub import extract_commit_hash

    with quiet_downloads():
        return extract_commit_hash(hf_hub_download(source, "config.json"), None) or "unknown-revision"


def _location(source: str) -> str:
    folder = Path(source).expanduser()
    return str(folder) if folder.is_dir() else source


def _load(source: str, location: str, auto_class: str):
    """The model's own tokenizer or image processor, or one BackboneError saying what to fetch."""
    import transformers

    what = "tokenizer" if auto_class == "AutoTokenizer" else "image processor (preprocessor_config.json)"
    try:
        with quiet_downloads():
            return getattr(transformers, auto_class).from_pretrained(location)
    except Exception as error:  # missing files, a missing backend, the hub: many exception types
        cause = cause_text(error)
        hint = " (pip install sentencepiece)" if "sentencepiece" in str(error).lower() else ""
        raise BackboneError(
            f"hf:{source}: the {what} cannot be read ({cause}){hint}. A model folder needs the hub "
            "snapshot's tokenizer files (tokenizer.json or spiece.model, tokenizer_config.json) and "
            "preprocessor_config.json beside config.json: fetch the whole snapshot where there is internet "
            "(huggingface-cli download HUB_ID --local-dir FOLDER) and copy the folder here."
        ) from None


class HFSiglipBackbone(FrozenCLIP):
    """A transformers SiglipModel or Siglip2Model with its own tokenizer and preprocessing."""

    zero_shot_rule = "sigmoid"

    def __init__(self, model: nn.Module, tokenizer, processor, source: str, weights_id: str,
                 config: Optional[BackboneConfig] = None) -> None:
        super().__init__(config)
        self.model = model
        self.naflex = model.config.model_type == "siglip2"
        vision = model.vision_model
        if not getattr(vision, "use_head", False):
            raise BackboneError(f"hf:{source}: the vision tower has no attention-pooling head (vision_use_head "
                                "is false), so it gives no image feature in the joint space")
        if self.dense != "tokens":
            raise BackboneError(f"hf:{source}: backbone.dense={self.dense!r} rewrites a class-token ViT's last "
                                "block; SigLIP's dense map is its pooling head's value path: dense=tokens")
        if self.naflex and self.pos_embed_resize != RESIZE_MODES[0]:
            raise BackboneError(f"hf:{source}: SigLIP 2 (NaFlex) resizes its positional grid by its own rule on "
                                "every call; backbone.pos_embed_resize does not apply: leave it 'bicubic'")
        self.patch_size = int(vision.config.patch_size)
        self._read_preprocessing(processor, source)
        self.image_size = int(self.config.image_size or self.native_size)
        self._set_resolution(self.image_size)
        self.embed_dim = int(vision.config.hidden_size)  # the head's output: no projection follows
        text = model.config.text_config
        if int(text.projection_size) != self.embed_dim:
            raise BackboneError(f"hf:{source}: the text head gives {text.projection_size} dimensions, the image "
                                f"head {self.embed_dim}")
        self.context_length = int(text.max_position_embeddings)
        self._set_tokenizer(tokenizer, source, int(text.vocab_size))
        self._identity = {"library": "transformers", "model": source, "weights": weights_id}
        self.freeze()

    # Loading -------------------------------------------------------------------------------
    def _read_preprocessing(self, processor, source: str) -> None:
        """Mean, std, resize kernel and native size from the model's image processor."""
        self.mean = tuple(float(v) for v in processor.image_mean)
        self.std = tuple(float(v) for v in processor.image_std)
        self.interpolation = pil_resample_name(processor.resample)
        self.library_resize_mode = "naflex" if self.naflex else "squash"
        if self.naflex:
            # NaFlex fits an image into a patch budget; a square image uses the whole budget.
            side = math.isqrt(int(processor.max_num_patches))
            if int(processor.patch_size) != self.patch_size:
                raise BackboneError(f"hf:{source}: the image processor cuts {processor.patch_size}-px patches, "
                                    f"the model takes {self.patch_size}-px ones")
            self.native_size = side * self.patch_size
        else:
            height, width = int(processor.size["height"]), int(processor.size["width"])
            if height != width:
                raise BackboneError(f"hf:{source}: the image processor resizes to {height}x{width}; "
                                    "clipml feeds square images")
            self.native_size = height

    def _set_resolution(self, image_size: int) -> None:
        self.grid = check_image_size(image_size, self.patch_size, f"a ViT with {self.patch_size}-px patches")
        if self.naflex:
            return  # Siglip2VisionEmbeddings resizes its grid to each call's spatial_shapes
        embeddings = self.model.vision_model.embeddings
        old = embeddings.position_embedding.weight.data
        resized = self._resize(old, self.grid, extra_tokens=0)
        if resized is not old:
            embeddings.position_embedding = nn.Embedding.from_pretrained(resized, freeze=True)
            embeddings.num_patches = embeddings.num_positions = self.grid[0] * self.grid[1]
            embeddings.register_buffer("position_ids", torch.arange(embeddings.num_positions).unsqueeze(0),
                                       persistent=False)
            embeddings.image_size = image_size

    def _set_tokenizer(self, tokenizer, source: str, vocab_size: int) -> None:
        """Where the words start and whether an end token follows them, read from the tokenizer
        itself; a tokenizer set to pad on the left is refused (TokenizerLayout says why)."""
        self._layout = TokenizerLayout(tokenizer, f"hf:{source}", vocab_size)
        self._tokenizer = tokenizer
        self.leading_tokens = self._layout.leading_tokens
        self.end_token_id = self._layout.end_token_id  # SigLIP: </s>, also its padding; else the padding

    # Image ---------------------------------------------------------------------------------
    def vision_states(self, images: torch.Tensor) -> torch.Tensor:
        """The vision transformer's output after its final layer norm [B, N, W]: what the head reads."""
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise BackboneError(f"images of {tuple(images.shape[-2:])} px for a tower set to {self.image_size} px")
        vision = self.model.vision_model
        if self.naflex:
            (h, w), p, b = self.grid, self.patch_size, images.shape[0]
            # Siglip2ImageProcessor's layout: patches row-major, each flattened as (row, col, channel).
            patches = images.reshape(b, images.shape[1], h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, -1)
            shapes = torch.tensor([[h, w]], device=images.device).expand(b, 2)
            x = vision.embeddings(patches, shapes)
        else:
            x = vision.embeddings(images)
        return vision.post_layernorm(vision.encoder(inputs_embeds=x).last_hidden_state)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            pooled = self._map_head(self.vision_states(images), dense=False)
        return pooled[:, 0].float()

    def encode_dense(self, images: torch.Tensor) -> Dense:
        with self.autocast():
            out = self._map_head(self.vision_states(images), dense=True)
        return Dense(tokens=out[:, 1:].float(), pooled=out[:, 0].float(), grid=self.grid)

    def _map_head(self, states: torch.Tensor, dense: bool) -> torch.Tensor:
        """The MAP head's output [B, 1 (+ N), D]: the probe's, then (`dense`) every patch's.

        The values are computed once and serve both: the probe attends over them, and each patch's
        own goes through the output projection and the same LN+MLP residual as the probe's mixture.
        """
        head = self.model.vision_model.head
        attention = head.attention
        batch, _, width = states.shape
        heads = attention.num_heads
        w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attention.in_proj_bias.chunk(3)

        def split(t):
            return t.reshape(batch, t.shape[1], heads, width // heads).transpose(1, 2)

        values = F.linear(states, w_v, b_v)
        query = F.linear(head.probe, w_q, b_q).expand(batch, -1, -1)
        mixed = F.scaled_dot_product_attention(split(query), split(F.linear(states, w_k, b_k)), split(values))
        x = mixed.transpose(1, 2).reshape(batch, 1, width)
        if dense:
            x = torch.cat([x, values], dim=1)
        x = attention.out_proj(x)
        return x + head.mlp(head.layernorm(x))

    # Text ----------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts), padding="max_length", max_length=self.context_length,
                               truncation=True, return_tensors="pt")["input_ids"]

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.text_model.embeddings.token_embedding(ids.to(self.device))

    def word_ids(self, text: str) -> torch.Tensor:
        return self._layout.word_slice(self.tokenize([text]))

    def text_lengths(self, ids: torch.Tensor) -> torch.Tensor:
        return self._layout.text_lengths(ids)

    def pooled_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """The last position, whatever token is there (SigLIP's text pooling)."""
        return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)

    @property
    def truncatable(self) -> bool:
        return False  # no causal mask: every position reaches the pooled one

    def encode_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            states = self._text_states(embeddings, ids)
            pooled = self.model.text_model.head(self._pooled_state(states, ids))
        return pooled.float()

    def encode_text_tokens(self, embeddings: torch.Tensor, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            tokens = self.model.text_model.head(self._text_states(embeddings, ids))
            pooled = self._pooled_state(tokens, ids)
        return tokens.float(), pooled.float()

    def _pooled_state(self, states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return states[torch.arange(states.shape[0], device=states.device), self.pooled_positions(ids)]

    def _text_states(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The text encoder's output after its final layer norm, [T, L, W]: every position attends
        to every other, padding included (SigLIP's training)."""
        if ids.shape[1] != self.context_length:
            raise BackboneError(f"SigLIP reads a text at its last position: prompts must be padded to "
                                f"{self.context_length} tokens, got {ids.shape[1]}")
        text = self.model.text_model
        x = text.embeddings(inputs_embeds=embeddings)
        return text.final_layer_norm(text.encoder(inputs_embeds=x).last_hidden_state)

    # Scoring -------------------------------------------------------------------------------
    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())

    @property
    def logit_bias(self) -> Optional[float]:
        return float(self.model.logit_bias.detach().float())
