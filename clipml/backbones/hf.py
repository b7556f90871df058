"""transformers `CLIPModel` (ViT towers) behind the FrozenCLIP protocol."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

from clipml.backbones.base import (
    Dense,
    FrozenCLIP,
    causal_mask,
    check_image_size,
    folder_digest,
)
from clipml.backbones._loading import cause_text, quiet_downloads
from clipml.backbones.config import BackboneConfig
from clipml.backbones.registry import Builder, register_family
from clipml.backbones.shipped import tiny_hf_configs
from clipml.backbones.vit_dense import LastBlock, last_block
from clipml.errors import BackboneError

logger = logging.getLogger(__name__)
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def pil_resample_name(resample) -> str:
    """The kernel name of an image processor's `resample` (a PIL resampling number)."""
    return PIL_RESAMPLE.get(int(resample), str(resample))


def create_hf_clip(source: str, allow_random: bool, tiny_configs: dict) -> tuple:
    """Build a transformers CLIPModel from a local folder, a hub id or a registered tiny config."""
    from transformers import CLIPConfig, CLIPModel

    if source in tiny_configs:
        if not allow_random:
            raise BackboneError(f"hf:{source} is a test model with random weights; set backbone.allow_random=true")
        with torch.random.fork_rng():  # reproducible, so a checkpoint can find the same model again
            torch.manual_seed(0)
            return CLIPModel(CLIPConfig(**tiny_configs[source])), "random"
    return load_pretrained(CLIPModel, source, "CLIP")


def load_pretrained(model_class, source: str, what: str) -> tuple:
    """(model, weights id) of a transformers `model_class` from a local folder or a hub id.

    A folder's weights are identified as `hf-folder:<folder name>:<sha256 prefix of its weight
    files>`: checkpoints compare the digest (other weights in the same folder are told apart,
    the same weights elsewhere are recognised); the name is shown in messages.
    """
    folder = Path(source).expanduser()
    if source.startswith((".", "/", "~")) and not folder.is_dir():
        raise BackboneError(f"transformers model folder not found: {folder}")
    if not folder.is_dir():
        logger.info("fetching the transformers model %r (or reading it from the cache)", source)
    try:
        with quiet_downloads():
            model, info = model_class.from_pretrained(str(folder) if folder.is_dir() else source,
                                                      output_loading_info=True)
    except Exception as error:  # hub and file errors come as many exception types
        if folder.is_dir():
            raise BackboneError(f"the transformers {what} model in {folder} cannot be read ({cause_text(error)}): "
                                "are its config.json and weight files complete?") from None
        raise unavailable(source, error, f"the transformers {what} model") from None
    missing = info.get("missing_keys") or []
    if missing:
        raise BackboneError(
            f"hf:{source}: {len(missing)} weights are missing from the files (e.g. {missing[0]}); "
            "the model would run partly random"
        )
    if folder.is_dir():
        return model, f"hf-folder:{folder.resolve().name}:{folder_digest(folder)}"
    return model, "hf-hub:" + source


def unavailable(source: str, error: Exception, what: str) -> BackboneError:
    """The error for a hub model that cannot be fetched: its cause and how to work offline."""
    return BackboneError(
        f"could not load {what} {source!r} ({cause_text(error)}). "
        "Without internet access, download it elsewhere (save_pretrained or a hub snapshot) and "
        "name the folder: backbone.spec=hf:/path/to/folder."
    )


MODEL_TYPES: Dict[str, Builder] = {}
"""config.json `model_type` -> builder of the adapter for that architecture; `hf:` specs whose
type is not listed here are CLIPModel (hf_siglip.py registers "siglip" and "siglip2")."""


def register_model_type(*names: str) -> Callable[[Builder], Builder]:
    """Decorator: `build(source, config)` makes the `hf:` towers whose config.json says one of `names`."""
    def register(build: Builder) -> Builder:
        for name in names:
            MODEL_TYPES[name] = build
        return build

    return register


def model_type(source: str) -> Optional[str]:
    """The `model_type` of a folder's or hub model's config.json; None for clipml's tiny test
    configs and folders without one (the CLIP path reports those)."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        config = folder / "config.json"
        return json.loads(config.read_text()).get("model_type") if config.is_file() else None
    if source.startswith((".", "/", "~")) or source in tiny_hf_configs():
        return None
    from huggingface_hub import hf_hub_download

    try:
        with quiet_downloads():
            path = hf_hub_download(source, "config.json")
    except Exception as error:  # offline, unknown repo, network: many exception types
        raise unavailable(source, error, "the transformers model") from None
    return json.loads(Path(path).read_text()).get("model_type")


@register_family("hf", "hf:HUB_ID_OR_FOLDER")
def build_hf_clip(source: str, config: BackboneConfig) -> "HFCLIPBackbone":
    """A transformers CLIPModel from a hub id, a local folder or a tiny test config's name; another
    architecture registered for the model's config.json `model_type` (`register_model_type`)."""
    if not config.attnpool_positional:
        raise BackboneError(f"hf:{source}: backbone.attnpool_positional=false applies to open_clip ModifiedResNet "
                            "towers; transformers' CLIP towers are ViTs")
    other = MODEL_TYPES.get(model_type(source))
    if other is not None:
        return other(source, config)
    model, weights_id = create_hf_clip(source, config.allow_random, tiny_hf_configs())
    return HFCLIPBackbone(model, source, weights_id, config)


def _preprocessor_config(source: str) -> Dict:
    """A model folder's preprocessor_config.json (empty for hub ids and folders without one)."""
    config = Path(source).expanduser() / "preprocessor_config.json"
    return json.loads(config.read_text()) if config.is_file() else {}


class HFCLIPBackbone(FrozenCLIP):
    """A transformers CLIPModel; text uses open_clip's offline BPE tokenizer (same ids)."""

    def __init__(
        self,
        model: nn.Module,
        source: str,
        weights_id: str,
        config: Optional[BackboneConfig] = None,
    ) -> None:
        super().__init__(config)
        image_size = self.config.image_size
        from open_clip.tokenizer import SimpleTokenizer

        self.model = model
        vision = model.vision_model
        self.image_size = int(image_size or vision.embeddings.image_size)
        self._set_resolution(self.image_size)
        self.embed_dim = int(model.config.projection_dim)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        # transformers' CLIPTokenizer offline can silently come back nearly empty; open_clip's
        # bundled BPE gives OpenAI's ids without any download.
        self._tokenizer = SimpleTokenizer(context_length=self.context_length)
        # transformers pools at the largest id for legacy configs (eos_token_id 2) and at the first
        # eos_token_id otherwise; with OpenAI's ids both are the tokenizer's end-of-text token.
        self.end_token_id = int(self._tokenizer.eot_token_id)
        if model.config.text_config.eos_token_id not in (2, self.end_token_id):
            raise BackboneError(f"hf:{source}: text_config.eos_token_id is {model.config.text_config.eos_token_id}, "
                                f"not CLIP's end-of-text id {self.end_token_id}: the family's tokenizer "
                                "(OpenAI's BPE) does not fit this model")
        preprocess = _preprocessor_config(source)
        if "image_mean" in preprocess and "image_std" in preprocess:
            self.mean, self.std = tuple(preprocess["image_mean"]), tuple(preprocess["image_std"])
        # CLIPImageProcessor: PIL bicubic unless the config names another kernel.
        self.interpolation = pil_resample_name(preprocess.get("resample", 3))
        self._identity = {"library": "transformers", "model": source, "weights": weights_id}
        self.freeze()

    def _set_resolution(self, image_size: int) -> None:
        embeddings = self.model.vision_model.embeddings
        self.grid = check_image_size(image_size, embeddings.patch_size, f"a ViT with {embeddings.patch_size}-px patches")
        old = embeddings.position_embedding.weight.data
        resized = self._resize(old, self.grid)
        if resized is not old:
            embeddings.position_embedding = nn.Embedding.from_pretrained(resized, freeze=True)
            embeddings.num_patches = self.grid[0] * self.grid[1]
            embeddings.num_positions = embeddings.num_patches + 1
            embeddings.register_buffer(
                "position_ids", torch.arange(embeddings.num_positions).unsqueeze(0), persistent=False
            )
            embeddings.image_size = image_size
            embeddings.config.image_size = image_size

    def encode_dense(self, images: torch.Tensor) -> Dense:
        """Dense map of `self.dense` (vit_dense.py); the global feature from the class token."""
        vision = self.model.vision_model
        with self.autocast():
            x = vision.pre_layrnorm(vision.embeddings(images))
            if self.dense == "tokens":
                x = vision.encoder(inputs_embeds=x).last_hidden_state
                cls, patches = x[:, :1], x[:, 1:]
            else:
                for layer in vision.encoder.layers[:-1]:
                    x = layer(x, None)
                cls, patches = last_block(self._last_block(), x, self.dense, rows=1)
            # transformers applies post_layernorm to the class token only; dense needs all tokens.
            pooled = self.model.visual_projection(vision.post_layernorm(cls[:, 0]))
            tokens = self.model.visual_projection(vision.post_layernorm(patches))
        return Dense(tokens=tokens.float(), pooled=pooled.float(), grid=self.grid)

    def _last_block(self) -> LastBlock:
        layer = self.model.vision_model.encoder.layers[-1]
        attention = layer.self_attn  # its scale is head_dim ** -0.5, as scaled_dot_product_attention's
        return LastBlock(
            ln_1=layer.layer_norm1,
            qkv=lambda h: (attention.q_proj(h), attention.k_proj(h), attention.v_proj(h)),
            out_proj=attention.out_proj, ln_2=layer.layer_norm2, mlp=layer.mlp, heads=attention.num_heads,
        )

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.text_model.embeddings.token_embedding(ids.to(self.device))

    def encode_embeddings(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            x = self._text_pool(self._text_states(embeddings, ids), ids)
        return x.float()

    def encode_text_tokens(self, embeddings: torch.Tensor, ids: torch.Tensor):
        with self.autocast():
            states = self._text_states(embeddings, ids)
            pooled = self._text_pool(states, ids)
            tokens = self.model.text_projection(states)
        return tokens.float(), pooled.float()

    def _text_pool(self, states: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The end token's state, projected: the text feature."""
        return self.model.text_projection(states[torch.arange(states.shape[0], device=states.device),
                                                 self.pooled_positions(ids)])

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())

    def _text_states(self, embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The text encoder's output after its final layer norm, [T, L, W]."""
        text = self.model.text_model
        length = ids.shape[1]
        if length > self.context_length:
            raise BackboneError(f"prompts of {length} tokens exceed the context length {self.context_length}")
        x = text.embeddings(inputs_embeds=embeddings)
        # An explicit additive mask is causal under every attention implementation;
        # SDPA without it (and without is_causal) silently attends both ways.
        mask = causal_mask(length, x.device, x.dtype).expand(x.shape[0], 1, length, length)
        return text.final_layer_norm(text.encoder(inputs_embeds=x, attention_mask=mask).last_hidden_state)
