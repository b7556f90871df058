"""open_clip towers behind the FrozenCLIP protocol: open_clip's own ViT and ModifiedResNet image
towers here, timm image towers (SigLIP, SigLIP 2, PE-Core, EVA-02, MobileCLIP 2) in timm_towers.py; CLIP's tokenizer or
the model's own transformers tokenizer (tokenizer_layout.py)."""

from __future__ import annotations

import difflib
import logging
import re
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clipml.backbones.base import (
    WEIGHT_SUFFIXES,
    Dense,
    FrozenCLIP,
    check_image_size,
    file_digest,
)
from clipml.backbones._loading import cause_text, quiet_downloads
from clipml.backbones.config import BackboneConfig
from clipml.backbones.registry import register_family
from clipml.backbones.shipped import TOY_MODELS, register_shipped_models, register_test_models
from clipml.backbones.timm_towers import timm_image_tower
from clipml.backbones.tokenizer_layout import TokenizerLayout
from clipml.backbones.vit_dense import LastBlock, last_block
from clipml.errors import BackboneError

logger = logging.getLogger(__name__)

# A readable file with the wrong tensors (load_state_dict's complaints), unlike a damaged one.
_MISFIT = re.compile(r"Error\(s\) in loading state_dict|size mismatch|Missing key|Unexpected key")


def _is_torchscript_archive(path: Path) -> bool:
    """OpenAI's original `RN101.pt` files are TorchScript archives, not state dicts."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def create_open_clip(name: str, weights: Optional[str], allow_random: bool) -> tuple:
    """Build an open_clip model with its weights; returns (model, weights identity).

    A local file is identified as `file:<name>:<sha256 prefix>`: checkpoints compare the digest
    only (clipml.engine.checkpoint), the name is shown in messages.
    """
    import open_clip

    config = open_clip.get_model_config(name)
    if config is None:
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise BackboneError(f"unknown open_clip model {name!r}.{hint} See open_clip.list_models().")
    tags = open_clip.list_pretrained_tags_by_model(name)

    if weights is None:
        if not allow_random:
            options = f" (pretrained tags: {', '.join(tags)})" if tags else (
                " (a tiny test model: backbone.allow_random=true)" if name.startswith("clipml-tiny-") else "")
            raise BackboneError(
                f"open_clip:{name} was given no weights and would run with random weights. "
                f"Name a pretrained tag, backbone.spec=open_clip:{name}@TAG{options}, or a local file, "
                f"backbone.spec=open_clip:{name}@/path/to/weights.safetensors."
            )
        with torch.random.fork_rng():  # reproducible, so a checkpoint can find the same model again
            torch.manual_seed(0)
            return open_clip.create_model(name, pretrained=None), "random"

    if weights in tags:
        # OpenAI's weights were trained with QuickGELU; open_clip only warns on a mismatch.
        quick_gelu = bool(open_clip.get_pretrained_cfg(name, weights).get("quick_gelu", False))
        logger.info("fetching the pretrained weights %r of open_clip:%s (or reading them from the cache)", weights, name)
        try:
            with quiet_downloads():
                model = open_clip.create_model(
                    name, pretrained=weights, force_quick_gelu=quick_gelu, require_pretrained=True
                )
        except Exception as error:  # download failures come as many exception types
            raise BackboneError(
                f"could not fetch the pretrained weights {weights!r} of open_clip:{name} ({cause_text(error)}). "
                f"Without internet access, download the weights elsewhere and name the file: "
                f"backbone.spec=open_clip:{name}@/path/to/weights.safetensors (or .pt/.bin)."
            ) from None
        return model, weights

    path = Path(weights).expanduser()
    if not path.is_file():
        if path.suffix in WEIGHT_SUFFIXES or "/" in weights:
            raise BackboneError(f"weights file not found: {path} (for open_clip:{name})")
        raise BackboneError(
            f"{weights!r} is neither a pretrained tag of open_clip:{name} "
            f"(known: {', '.join(tags) or 'none'}) nor an existing weights file"
        )
    try:
        torchscript = _is_torchscript_archive(path)
        if torchscript:
            model = open_clip.load_openai_model(str(path), precision="fp32", device="cpu")
        else:
            model = open_clip.create_model(name, pretrained=str(path), require_pretrained=True)
    except Exception as error:  # torch, safetensors and zip readers raise many types
        if _MISFIT.search(str(error)):
            first = " ".join(str(error).strip().splitlines()[:3])
            raise BackboneError(f"weights file {path} does not fit open_clip:{name} (another architecture?): "
                                f"{cause_text(first, limit=400)}") from None
        raise BackboneError(f"weights file {path} cannot be read ({cause_text(error)}): it is damaged, "
                            "incomplete or not a weights file; download it again") from None
    if torchscript:
        expect_resnet = isinstance(config["vision_cfg"].get("layers"), (list, tuple))
        if _is_resnet(model.visual) != expect_resnet or model.visual.output_dim != config["embed_dim"]:
            raise BackboneError(f"weights file {path} holds another architecture than open_clip:{name}")
    return model, f"file:{path.name}:{file_digest(path)}"


@register_family("open_clip", "open_clip:MODEL@TAG_OR_FILE")
def build_open_clip(source: str, config: BackboneConfig) -> "OpenCLIPBackbone":
    """An open_clip model by name, with a pretrained tag or a local weights file after '@'."""
    name, _, weights = source.partition("@")
    register_test_models() if name.startswith("clipml-tiny-") else register_shipped_models()
    model, weights_id = create_open_clip(name, weights or None, config.allow_random)
    if weights_id.startswith("file:") and name in TOY_MODELS.values():
        weights_id = "toy:" + weights_id.rsplit(":", 1)[1]
    if weights_id.startswith("file:") and _is_timm(model.visual):
        _preprocess_of_tags(model, name)
    return OpenCLIPBackbone(model, name, weights_id, config)


def _preprocess_of_tags(model: nn.Module, name: str) -> None:
    """A local weights file gets the preprocessing its model's pretrained tags agree on (open_clip
    reads it from a tag only; SigLIP and PE-Core normalise with 0.5, not CLIP's statistics)."""
    import open_clip

    configs = [open_clip.get_pretrained_cfg(name, tag) for tag in open_clip.list_pretrained_tags_by_model(name)]
    keys = ("mean", "std", "interpolation", "resize_mode")
    chosen = {tuple((key, config.get(key)) for key in keys if config.get(key) is not None) for config in configs}
    if len(chosen) > 1:
        raise BackboneError(f"the pretrained tags of open_clip:{name} preprocess images differently; load the "
                            f"weights by their tag (backbone.spec=open_clip:{name}@TAG) so their preprocessing "
                            "is known")
    if chosen:
        open_clip.set_model_preprocess_cfg(model, dict(model.visual.preprocess_cfg, **dict(chosen.pop())))


def _is_timm(visual: nn.Module) -> bool:
    from open_clip.timm_model import TimmModel

    return isinstance(visual, TimmModel)


def _own_tokenizer(name: str, context_length: int):
    """CLIP's tokenizer, or the model's own from open_clip (SigLIP: a transformers tokenizer from
    the hub, which must be in the local cache when offline)."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    config = open_clip.get_model_config(name) or {}
    hub_name = config.get("text_cfg", {}).get("hf_tokenizer_name")
    if not hub_name and "siglip" not in name.lower():
        return SimpleTokenizer(context_length=context_length)
    try:
        with quiet_downloads():
            return open_clip.get_tokenizer(name, context_length=context_length)
    except Exception as error:  # hub and file errors come as many exception types
        raise BackboneError(
            f"could not load the tokenizer of open_clip:{name} ({hub_name or 'SigLIP sentencepiece model'}: "
            f"{cause_text(error)}). Without internet access, download it elsewhere "
            f"(huggingface-cli download {hub_name or 'timm/' + name}) into the Hugging Face cache and set "
            "HF_HUB_OFFLINE=1") from None


def _is_resnet(visual: nn.Module) -> bool:
    from open_clip.modified_resnet import ModifiedResNet

    return isinstance(visual, ModifiedResNet)


class OpenCLIPBackbone(FrozenCLIP):
    """An open_clip CLIP (ViT or ModifiedResNet image tower, open_clip text transformer)."""

    def __init__(
        self,
        model: nn.Module,
        name: str,
        weights_id: str,
        config: Optional[BackboneConfig] = None,
    ) -> None:
        super().__init__(config)
        dense, image_size = self.dense, self.config.image_size
        from open_clip.tokenizer import SimpleTokenizer
        from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

        self.model = model
        visual = model.visual
        self.is_resnet = _is_resnet(visual)
        # A timm image tower (timm_towers.py) does the image half of the protocol itself.
        self.image_tower = timm_image_tower(visual, name, dense, self._resize) if _is_timm(visual) else None
        if self.image_tower is None and not self.is_resnet and not isinstance(visual, VisionTransformer):
            raise BackboneError(f"open_clip:{name}: image tower {type(visual).__name__} is not supported")
        own_vit = self.image_tower is None and not self.is_resnet
        if own_vit and (visual.attn_pool is not None or visual.pool_type not in ("tok", "avg")):
            raise BackboneError(f"open_clip:{name}: attention-pooled ViT towers give no dense map")
        if self.is_resnet and dense != "tokens":
            raise BackboneError(
                f"open_clip:{name} is a ModifiedResNet: dense mode {dense!r} applies to ViT towers only; "
                "a ResNet's dense map is its attention pool's value path (METHODS §1), dense='tokens'"
            )
        if not self.is_resnet and not self.attnpool_positional:
            raise BackboneError(
                f"open_clip:{name} is a ViT: backbone.attnpool_positional=false applies to ModifiedResNet "
                "towers (their attention pool's positional embedding); a ViT adds its own at the input"
            )
        if own_vit and dense != "tokens":
            last = visual.transformer.resblocks[-1]
            if type(last) is not ResidualAttentionBlock or hasattr(last, "ln_1_kv"):
                raise BackboneError(f"open_clip:{name}: dense mode {dense!r} needs open_clip's standard "
                                    f"ResidualAttentionBlock, this tower has {type(last).__name__}")
        self.text_tower = model if hasattr(model, "token_embedding") else getattr(model, "text", None)
        if self.text_tower is None or not hasattr(self.text_tower, "token_embedding"):
            raise BackboneError(
                f"open_clip:{name}: the text tower is not open_clip's own transformer; "
                "prompt learning needs its token embedding"
            )
        if getattr(self.text_tower, "cls_emb", None) is not None:
            raise BackboneError(f"open_clip:{name}: text towers with a class token are not supported")

        native = visual.image_size if self.is_resnet else visual.image_size[0]
        self.image_size = int(image_size or native)
        self._set_resolution(self.image_size)
        self.embed_dim = int(visual.output_dim if self.image_tower is None else self.text_tower.output_dim)
        self.context_length = int(self.text_tower.positional_embedding.shape[0])
        self._tokenizer = _own_tokenizer(name, self.context_length)
        self._layout = None  # CLIP's tokenizer: the contract's defaults (start token, end token)
        if not isinstance(self._tokenizer, SimpleTokenizer):
            self._layout = TokenizerLayout(self._tokenizer.tokenizer, f"open_clip:{name}",
                                           self.text_tower.token_embedding.num_embeddings)
            self.leading_tokens = self._layout.leading_tokens
        tower = self.text_tower
        self._pool_type = getattr(tower, "text_pool_type", None) or getattr(tower, "pool_type", "argmax")
        if self._pool_type not in ("argmax", "eos", "first", "last"):
            raise BackboneError(f"open_clip:{name}: text pooling {self._pool_type!r} is not supported")
        # 'eos' towers name their end id (it must match their tokenizer); CLIP's is the tokenizer's.
        tower_eos = getattr(tower, "text_eos_id", None) or getattr(tower, "eos_id", None)
        self.end_token_id = int(tower_eos if self._pool_type == "eos" else self._tokenizer.eot_token_id
                                if self._layout is None else self._layout.end_token_id)
        self.zero_shot_rule = "softmax" if self.logit_bias is None else "sigmoid"
        preprocess = getattr(visual, "preprocess_cfg", None) or {}
        self.mean = tuple(preprocess.get("mean", self.mean))
        self.std = tuple(preprocess.get("std", self.std))
        # How open_clip resizes images for this model (tag) itself: clipml uses its kernel.
        self.interpolation = str(preprocess.get("interpolation", self.interpolation))
        self.library_resize_mode = str(preprocess.get("resize_mode", self.library_resize_mode))
        self._identity = {"library": "open_clip", "model": name, "weights": weights_id}
        self.freeze()

    def _set_resolution(self, image_size: int) -> None:
        """Interpolate the positional embedding of the image tower to the new grid, once."""
        visual = self.model.visual
        if self.image_tower is not None:
            self.grid = self.image_tower.set_resolution(image_size)
        elif self.is_resnet:
            pool = visual.attnpool
            self.grid = check_image_size(image_size, 32, "a ModifiedResNet (stride 32)")
            resized = self._resize(pool.positional_embedding.data, self.grid)
            pool.positional_embedding = nn.Parameter(resized, requires_grad=False)
            visual.image_size = image_size
        else:
            patch = visual.conv1.kernel_size[0]
            self.grid = check_image_size(image_size, patch, f"a ViT with {patch}-px patches")
            resized = self._resize(visual.positional_embedding.data, self.grid)
            visual.positional_embedding = nn.Parameter(resized, requires_grad=False)
            visual.grid_size = self.grid
            visual.image_size = (image_size, image_size)

    # Image ---------------------------------------------------------------------------------
    def encode_dense(self, images: torch.Tensor) -> Dense:
        with self.autocast():
            if self.image_tower is not None:
                tokens, pooled = self.image_tower.dense(images)
            elif self.is_resnet:
                tokens, pooled = self._resnet_dense(images)
            else:
                tokens, pooled = self._vit_dense(images)
        return Dense(tokens=tokens.float(), pooled=pooled.float(), grid=self.grid)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        if self.image_tower is None:
            return super().encode_image(images)
        with self.autocast():
            return self.image_tower.pooled(images).float()

    def _vit_dense(self, images: torch.Tensor):
        """Dense map of `self.dense` (vit_dense.py); the global feature by the library's own pooling."""
        visual = self.model.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(visual.patch_dropout(x))
        rows = x.shape[1] if visual.pool_type == "avg" else 1  # the tokens the global feature reads
        if self.dense == "tokens":
            x = visual.transformer(x)
            library, patches = x[:, :rows], x[:, 1:]
        else:
            for block in visual.transformer.resblocks[:-1]:
                x = block(x)
            library, patches = last_block(self._last_block(), x, self.dense, rows)
        pooled, _ = visual._pool(library)
        return visual.ln_post(patches) @ visual.proj, pooled @ visual.proj

    def _last_block(self) -> LastBlock:
        block = self.model.visual.transformer.resblocks[-1]
        attention = block.attn
        return LastBlock(
            ln_1=block.ln_1,
            qkv=lambda h: F.linear(h, attention.in_proj_weight, attention.in_proj_bias).chunk(3, dim=-1),
            out_proj=attention.out_proj, ln_2=block.ln_2, mlp=block.mlp, heads=attention.num_heads,
            ls_1=block.ls_1, ls_2=block.ls_2,
        )

    def resnet_feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The layer-4 map [B, C, h, w] that the attention pool reads."""
        visual = self.model.visual
        images = images.to(visual.conv1.weight.dtype)
        if images.is_cuda:  # cuDNN convolutions are fastest in channels-last layout
            images = images.contiguous(memory_format=torch.channels_last)
        x = visual.stem(images)
        return visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))

    def _resnet_dense(self, images: torch.Tensor):
        """The attention pool's output and its per-location value tokens, in one pass.

        The library's pool runs queries and outputs for all N+1 tokens and keeps token 0; here the
        only query is the mean token and the values are shared with the dense map, so the dense
        path costs no more than `encode_image`. Without `attnpool_positional` the layer-4 map
        enters the pool as it is (TaI-DPT's `attnpool(..., if_pos=False)` and its local map).
        """
        pool = self.model.visual.attnpool
        feature_map = self.resnet_feature_map(images)
        x = feature_map.flatten(2).transpose(1, 2)  # [B, N, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
        if self.attnpool_positional:
            x = x + pool.positional_embedding.to(x.dtype)
        batch, tokens, width = x.shape
        heads = pool.num_heads

        def split(t):
            return t.reshape(batch, t.shape[1], heads, width // heads).transpose(1, 2)

        values = pool.v_proj(x)
        attended = F.scaled_dot_product_attention(
            split(pool.q_proj(x[:, :1])), split(pool.k_proj(x)), split(values)
        )
        pooled = pool.c_proj(attended.transpose(1, 2).reshape(batch, width))
        # Every location through the value and output projections only (METHODS §1).
        return pool.c_proj(values[:, 1:]), pooled

    @property
    def has_attention_pool(self) -> bool:
        return self.is_resnet

    def attention_pool_mean_token(self, tokens: torch.Tensor) -> torch.Tensor:
        """The pool's mean token through v_proj and c_proj, from the dense tokens alone.

        Those projections are affine and the mean token's input is the mean of the locations'
        inputs, so it equals the mean of the tokens plus c_proj.W v_proj.W (pos_0 - mean_j pos_j):
        no image is needed, and features read from a cache serve as well as fresh ones. Without
        `attnpool_positional` no position enters the pool, and the offset is zero.
        """
        if not self.is_resnet:
            return super().attention_pool_mean_token(tokens)
        if not self.attnpool_positional:
            return tokens.mean(dim=1)
        pool = self.model.visual.attnpool
        pos = pool.positional_embedding.float()
        offset = pool.c_proj.weight.float() @ (pool.v_proj.weight.float() @ (pos[0] - pos[1:].mean(dim=0)))
        return tokens.mean(dim=1) + offset.to(tokens.dtype)

    # Text ----------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_tower.token_embedding(ids.to(self.device))

    def text_lengths(self, ids: torch.Tensor) -> torch.Tensor:
        return super().text_lengths(ids) if self._layout is None else self._layout.text_lengths(ids)

    def word_ids(self, text: str) -> torch.Tensor:
        return super().word_ids(text) if self._layout is None else self._layout.word_slice(self.tokenize([text]))

    def encode_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            x = self._project_text(self._text_pool(self._text_states(embeddings, ids), ids))
        return x.float()

    def encode_text_tokens(self, embeddings: torch.Tensor, ids: torch.Tensor):
        with self.autocast():
            states = self._text_states(embeddings, ids)
            pooled = self._project_text(self._text_pool(states, ids))
            tokens = self._project_text(states)
        return tokens.float(), pooled.float()

    def _text_states(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The text transformer's output after its final layer norm, [T, L, W]."""
        tower = self.text_tower
        length = ids.shape[1]
        if length > self.context_length:
            raise BackboneError(f"prompts of {length} tokens exceed the context length {self.context_length}")
        cast = tower.transformer.get_cast_dtype()
        x = embeddings.to(cast) + tower.positional_embedding[:length].to(cast)
        mask = tower.attn_mask
        mask = mask[:length, :length] if mask is not None else None
        if getattr(tower, "use_pad_mask", False):
            pad = tower._build_additive_mask(ids, length, x.dtype)
            mask = pad if mask is None else mask.unsqueeze(0) + pad
        return tower.ln_final(tower.transformer(x, attn_mask=mask))

    def pooled_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """open_clip's text pooling: the end-of-text token ('argmax' towers: CLIP's tokenizer gives
        it the largest id; 'eos' towers: the tower's own end id), or the first or last position."""
        if self._pool_type == "first":
            return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        if self._pool_type == "last":
            return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)
        return super().pooled_positions(ids)

    @property
    def truncatable(self) -> bool:
        return self.text_tower.attn_mask is not None and self._pool_type != "last"

    def _text_pool(self, states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return states[torch.arange(states.shape[0], device=states.device), self.pooled_positions(ids)]

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())

    @property
    def logit_bias(self) -> Optional[float]:
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias.detach().float())

    def _project_text(self, x: torch.Tensor) -> torch.Tensor:
        projection = self.text_tower.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, nn.Linear) else x @ projection
