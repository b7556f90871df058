"""MultiLabelCLIP: a frozen backbone, a prompt learner and a per-class scoring head, wired
according to a method name. Methods are configurations, not separate model classes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from clipml.backbones import Dense, FrozenCLIP, TextDense
from clipml.blending import RepresentationBlending
from clipml.decoupler import (CosineHead, SemanticDecoupler, dense_pool_scores, double_grained_scores,
                              dualcoop_aggregate)
from clipml.config import require
from clipml.errors import ConfigError
from clipml.transport import ConditionalTransport
from clipml.prompts import (DEFAULT_TEMPLATE, ContextPrompts, DoubleGrainedPrompts, DualPrompts, HandcraftedPrompts,
                            handcrafted_text_features)

Method = Literal["zero_shot", "coop", "csc_global", "dualcoop", "sdm_csp", "taidpt"]

# method -> (prompt learner, scoring head)
METHODS = {
    "zero_shot": ("handcrafted", "global"),
    "coop": ("shared", "global"),
    "csc_global": ("class_specific", "global"),
    "dualcoop": ("dual", "dualcoop"),
    "sdm_csp": ("class_specific", "decoupler"),
    "taidpt": ("double", "taidpt"),  # trained on captions (texts as images), scores images
}


@dataclasses.dataclass
class BlendingConfig:
    """DSRB (METHODS §6): blend per-class features across images (IPRB) and with prototypes (PPRB),
    optionally with a category-wise contrastive term between images; all from ``start_epoch`` on."""

    instance: bool = False  # IPRB: blend with the same class in another image of the batch
    prototype: bool = False  # PPRB: blend with the class prototype of another image quadrant
    contrastive_weight: float = 0.0  # weight of blending.category_contrastive; 0 = off, reference 0.05
    lambda_instance: float = 1.0  # weight of the IPRB loss term
    lambda_prototype: float = 1.0  # weight of the PPRB loss term
    start_epoch: int = 5  # epochs trained before the DSRB terms start (5: from epoch 6 on); prototypes first computed then
    prototype_every: int = 5  # recompute prototypes every R epochs
    max_samples: int = 100  # most known-positive features averaged into one prototype
    topk: int = 1  # unknown classes per image blended with a prototype
    alpha_init: float = 0.5  # initial IPRB weight α (learned, in [0, 1])
    beta_init: float = 0.5  # initial PPRB weight β (learned, in [0, 1])
    target_grad: bool = False  # let the soft target 1 - α carry gradient (the reference code does)
    # Where PPRB (blend and prototype pass) finds a class's peak quadrant: "attention" (argmax of a_c)
    # or "feature" (argmax of a_cj · Σ_d z_jd, the reference code's Σ_d coefficient × feature map).
    peak: Literal["attention", "feature"] = "attention"
    # Average each prototype over a zero row plus its n samples (sum / (n + 1)), as the reference
    # code's placeholder row does; false: the mean of the n samples.
    prototype_zero_row: bool = False
    # A (class, quadrant) cell without a sample: "skip" (never drawn) or "class_mean" (the mean of the
    # class's samples, drawn like any other cell, as the reference code).
    empty_cells: Literal["skip", "class_mean"] = "skip"
    # "hinge": mean(1 − cos) over positive–positive pairs + mean(max(0, cos)) over positive–negative;
    # "mined": the reference's one mean over 1 − cos (pos–pos), 1 + cos (pos–neg, neg–neg), the push
    # pairs cut to a random 2P plus the P hardest (P = number of pos–pos pairs).
    contrastive_form: Literal["hinge", "mined"] = "hinge"
    # When the contrastive term is on: "with_blending" (from start_epoch) or "from_start" (from the
    # first epoch, its weight ramped linearly over that epoch's batches, as the reference code).
    contrastive_schedule: Literal["with_blending", "from_start"] = "with_blending"

    def __post_init__(self) -> None:
        for key in ("contrastive_weight", "lambda_instance", "lambda_prototype"):
            require(getattr(self, key) >= 0, f"model.blending.{key}", getattr(self, key), ">= 0 (0: off)")
        require(self.start_epoch >= 0, "model.blending.start_epoch", self.start_epoch, ">= 0")
        for key in ("prototype_every", "max_samples", "topk"):
            require(getattr(self, key) >= 1, f"model.blending.{key}", getattr(self, key), "at least 1")
        for key in ("alpha_init", "beta_init"):
            require(0.0 <= getattr(self, key) <= 1.0, f"model.blending.{key}", getattr(self, key), "in [0, 1]")

    @property
    def enabled(self) -> bool:
        """Any DSRB training term is on (each needs the decoupler's per-class features)."""
        return self.instance or self.prototype or self.contrastive_weight > 0


@dataclasses.dataclass
class TransportConfig:
    """Conditional-transport alignment of dense features with known-positive prompts (METHODS §7)."""

    enabled: bool = False  # add the conditional-transport alignment term
    weight: float = 0.1  # λ_CT
    tau_nav: float = 0.05  # temperature of the transport navigators
    rho: float = 0.2  # share of the location -> label direction (small: unannotated objects)
    background: bool = False  # a learned background target that absorbs locations

    def __post_init__(self) -> None:
        require(self.weight >= 0, "model.transport.weight", self.weight, ">= 0")
        require(self.tau_nav > 0, "model.transport.tau_nav", self.tau_nav, "> 0")
        require(0.0 <= self.rho <= 1.0, "model.transport.rho", self.rho, "in [0, 1]")


@dataclasses.dataclass
class TaIDPTConfig:
    """TaI-DPT's double-grained scoring (METHODS §12); defaults are the reference code's."""

    scale: float = 4.0  # both branches: scale · cosine
    text_spatial_scale: float = 50.0  # softmax sharpness over a caption's tokens (training)
    image_spatial_scale: float = 40.0  # softmax sharpness over an image's locations (evaluation)
    global_weight: float = 0.5  # score = w · global + (1 − w) · local

    def __post_init__(self) -> None:
        for key in ("scale", "text_spatial_scale", "image_spatial_scale"):
            require(getattr(self, key) > 0, f"model.taidpt.{key}", getattr(self, key), "> 0")
        require(0.0 <= self.global_weight <= 1.0, "model.taidpt.global_weight", self.global_weight, "in [0, 1]")


@dataclasses.dataclass
class DualCoOpConfig:
    """DualCoOp's prompts and region aggregation (METHODS §4); defaults are clipml's choices."""

    # Own contexts per class (the reference's --csc); false: one positive and one negative
    # context shared by all classes, which the reference README suggests at very small p.
    class_specific: bool = True
    # Also aggregate over the attention pool's mean token (its value path, c_proj(v_proj(.))),
    # as the reference code's dense map does (HW + 1 tokens); ResNet backbones only. false: the
    # HW locations only, so S+/S- and the attention map are purely spatial.
    mean_token: bool = False


@dataclasses.dataclass
class ModelConfig:
    method: Method = "sdm_csp"  # zero_shot, coop, csc_global, dualcoop or sdm_csp (README table)
    n_ctx: int = 16  # learned context vectors per prompt
    ctx_init: Optional[str] = None  # e.g. "a photo of a": the last context slots start from these words
    # DualCoOp's negative context: its own init words (None: N(0, ctx_std), as the paper's default).
    # Setting it to ctx_init gives the earlier default: equal prompts, logits 0 at the start.
    negative_ctx_init: Optional[str] = None
    ctx_std: float = 0.02  # std of the random context initialisation
    templates: List[str] = dataclasses.field(default_factory=lambda: [DEFAULT_TEMPLATE])  # hand-crafted prompts
    # Decoupler guidance: "handcrafted" (frozen CLIP text of the templates), "learned" (the learned
    # prompt's feature, detached) or a path to a .npy of word vectors [C, G] in class order.
    guidance: str = "handcrafted"
    decoupler_dim: int = 512  # width of the semantic decoupler's attention space
    # "random": PyTorch's default init (the paper's); "uniform": attention starts uniform (P = 0), so
    # sdm_csp starts from the mean of the dense tokens, for an average-pooled tower its global feature.
    decoupler_init: Literal["random", "uniform"] = "random"
    # A d×d linear layer (with bias) between the decoupler's tanh and its output layer, as
    # HCP-MLR-PL's SemanticDecoupling (fc3); false: the seed paper's P: d -> 1 directly (METHODS §3).
    decoupler_extra_linear: bool = False
    # Scale of the cosine logits; null: the backbone's own logit scale (OpenAI's CLIP: 100) and,
    # where the family has one (sigmoid-trained towers), its logit bias.
    temperature: Optional[float] = 100.0
    learn_temperature: bool = False  # train the temperature too
    # A learned logit bias with this initial value for the cosine heads (None: no bias, as METHODS §3,
    # or the tower's own with temperature null; dualcoop and taidpt never take one, zero_shot only the tower's).
    logit_bias: Optional[float] = None
    zero_shot_scoring: Literal["global", "dense"] = "global"  # zero_shot: pooled feature or per-class dense pooling
    blending: BlendingConfig = dataclasses.field(default_factory=BlendingConfig)
    transport: TransportConfig = dataclasses.field(default_factory=TransportConfig)
    taidpt: TaIDPTConfig = dataclasses.field(default_factory=TaIDPTConfig)
    dualcoop: DualCoOpConfig = dataclasses.field(default_factory=DualCoOpConfig)

    def __post_init__(self) -> None:
        require(self.method in METHODS, "model.method", self.method, f"one of {sorted(METHODS)}")
        require(self.n_ctx >= 1, "model.n_ctx", self.n_ctx, "at least 1")
        for key in ("ctx_init", "negative_ctx_init"):
            require(getattr(self, key) != "", f"model.{key}", getattr(self, key), "some words or null")
        require(self.ctx_std >= 0, "model.ctx_std", self.ctx_std, ">= 0")
        require(bool(self.templates), "model.templates", self.templates, "at least one template")
        for template in self.templates:
            require("{}" in template, "each of model.templates", template, "a text with a '{}' for the class name")
        require(self.guidance in ("handcrafted", "learned") or self.guidance.endswith(".npy"), "model.guidance",
                self.guidance, "'handcrafted', 'learned' or a .npy file")
        require(self.decoupler_dim >= 1, "model.decoupler_dim", self.decoupler_dim, "at least 1")
        require(self.temperature is None or self.temperature > 0, "model.temperature", self.temperature,
                "positive (or null: the backbone's own logit scale)")
        head = METHODS[self.method][1]
        if self.blending.enabled and head != "decoupler":
            raise ConfigError(f"model.blending needs per-class features: method sdm_csp, not {self.method}")
        if self.transport.enabled and self.method == "zero_shot":
            raise ConfigError("model.transport aligns learnable prompts; zero_shot has none")
        if self.transport.enabled and self.method == "taidpt":
            raise ConfigError("model.transport aligns image features with image labels; taidpt trains on captions")


@dataclasses.dataclass
class Output:
    logits: torch.Tensor  # [B, C]
    text: torch.Tensor  # [C, D] (the positive prompts for DualCoOp, the global ones for TaI-DPT)
    features: Optional[torch.Tensor] = None  # [B, C, D] per-class visual features (decoupler)
    attention: Optional[torch.Tensor] = None  # [B, C, N] spatial attention, rows sum to 1
    parts: Optional[Tuple[torch.Tensor, ...]] = None  # branch logits that each get the loss (TaI-DPT)


class MultiLabelCLIP(nn.Module):
    """Per-class logits from images (or from their dense features, e.g. read from a cache)."""

    def __init__(self, backbone: FrozenCLIP, classnames: Sequence[str], config: ModelConfig) -> None:
        super().__init__()
        if config.method not in METHODS:
            raise ConfigError(f"model.method must be one of {sorted(METHODS)}, got {config.method!r}")
        repeated = sorted({name for name in classnames if list(classnames).count(name) > 1})
        if repeated:  # contexts and thresholds are keyed by class name
            raise ConfigError(f"class names must be distinct, found {repeated} more than once")
        self.backbone = backbone
        self.classnames = list(classnames)
        self.config = config
        prompt_kind, self.head_kind = METHODS[config.method]
        if prompt_kind == "handcrafted":
            self.prompts = HandcraftedPrompts(backbone, classnames, config.templates)
        elif prompt_kind == "dual":
            self.prompts = DualPrompts(backbone, classnames, config.n_ctx, config.ctx_init, config.ctx_std,
                                       config.negative_ctx_init, config.dualcoop.class_specific)
        elif prompt_kind == "double":
            self.prompts = DoubleGrainedPrompts(backbone, classnames, config.n_ctx, config.ctx_init, config.ctx_std)
        else:
            self.prompts = ContextPrompts(
                backbone, classnames, config.n_ctx, prompt_kind == "class_specific", config.ctx_init, config.ctx_std
            )
        # DualCoOp scores S+ − S−, whose negative prompt already sets each class's offset: no bias.
        # TaI-DPT scores with its own fixed scales (model.taidpt).
        learned = config.learn_temperature and self.head_kind != "taidpt"
        scale, bias = self._logit_scale_and_bias(prompt_kind)
        self.head = CosineHead(scale, learned, bias, learn_bias=prompt_kind != "handcrafted")
        if self.head_kind == "decoupler":
            guidance = self._fixed_guidance()
            guide_dim = backbone.embed_dim if guidance is None else guidance.shape[1]
            if guidance is not None:
                self.register_buffer("guidance", guidance, persistent=False)
            self.decoupler = SemanticDecoupler(backbone.embed_dim, guide_dim, config.decoupler_dim,
                                               init=config.decoupler_init, extra_linear=config.decoupler_extra_linear)
        if self.head_kind == "dualcoop" and config.dualcoop.mean_token and not backbone.has_attention_pool:
            raise ConfigError("model.dualcoop.mean_token needs a ModifiedResNet backbone (CLIP's attention pool "
                              "has the mean token); this backbone has none: set it to false")
        if self.head_kind == "taidpt" and not 0.0 <= config.taidpt.global_weight <= 1.0:
            raise ConfigError(f"model.taidpt.global_weight must be in [0, 1], got {config.taidpt.global_weight}")
        blend = config.blending
        if blend.contrastive_weight < 0:
            raise ConfigError(f"model.blending.contrastive_weight must be >= 0; got {blend.contrastive_weight}")
        if blend.enabled and self.head_kind != "decoupler":
            raise ConfigError(f"model.blending needs per-class features: method sdm_csp, not {config.method}")
        if blend.instance or blend.prototype:
            # Used by the trainer only: evaluation and prediction never blend.
            self.blending = RepresentationBlending(
                len(self.classnames), backbone.embed_dim, blend.instance, blend.prototype,
                max_samples=blend.max_samples, topk=blend.topk, alpha_init=blend.alpha_init,
                beta_init=blend.beta_init, target_grad=blend.target_grad,
            )
        if config.transport.enabled:
            if prompt_kind == "handcrafted":
                raise ConfigError("model.transport aligns learnable prompts; zero_shot has none")
            if self.head_kind == "taidpt":
                raise ConfigError("model.transport aligns image features with image labels; taidpt trains on captions")
            ct = config.transport
            self.transport = ConditionalTransport(backbone.embed_dim, ct.tau_nav, ct.rho, ct.background)
        self.to(backbone.device)

    def _logit_scale_and_bias(self, prompt_kind: str) -> Tuple[float, Optional[float]]:
        """The cosine head's scale and bias: model.temperature, or with it null the tower's own
        scale and bias (a bias only where the family has one, e.g. sigmoid-trained towers).

        zero_shot learns nothing and takes only the tower's bias; the other cosine heads learn a
        bias starting from model.logit_bias, else from the tower's; DualCoOp's S+ − S− and
        TaI-DPT's fixed scales take none."""
        config, backbone = self.config, self.backbone
        if config.temperature is not None and config.temperature <= 0:
            raise ConfigError(f"model.temperature must be positive (or null: the backbone's own logit scale), "
                              f"got {config.temperature}")
        from_tower = config.temperature is None
        scale = backbone.logit_scale if from_tower else float(config.temperature)
        tower_bias = backbone.logit_bias if from_tower else None
        if self.head_kind in ("dualcoop", "taidpt"):
            return scale, None
        if prompt_kind == "handcrafted":
            return scale, tower_bias
        return scale, config.logit_bias if config.logit_bias is not None else tower_bias

    def _fixed_guidance(self) -> Optional[torch.Tensor]:
        source = self.config.guidance
        if source == "learned":
            return None
        if source == "handcrafted":
            return handcrafted_text_features(self.backbone, self.classnames, self.config.templates)
        path = Path(source)
        if path.suffix != ".npy" or not path.is_file():
            raise ConfigError(
                f"model.guidance must be 'handcrafted', 'learned' or an existing .npy file, got {source!r}"
            )
        vectors = np.load(path, allow_pickle=False)
        if vectors.ndim != 2 or vectors.shape[0] != len(self.classnames):
            raise ConfigError(
                f"{path}: expected word vectors of shape [{len(self.classnames)} classes, dim], found {vectors.shape}"
            )
        return torch.as_tensor(vectors, dtype=torch.float32)

    def text_features(self):
        """Text features of the current prompts: [C, D], or (positive, negative) for DualCoOp,
        (global, local) for TaI-DPT."""
        return self.prompts()

    def encode(self, images: torch.Tensor) -> Dense:
        with torch.no_grad():
            return self.backbone.encode_dense(images)

    def forward(self, images: torch.Tensor, text=None) -> Output:
        return self.forward_dense(self.encode(images), text)

    def forward_dense(self, dense: Dense, text=None) -> Output:
        """Scores from dense features; `text` (from `text_features()`) can be passed to reuse it.

        TaI-DPT also scores texts standing in for images (`TextDense`, its training data)."""
        if text is None:
            text = self.text_features()
        if self.head_kind == "taidpt":
            return self._double_grained(dense, *text)
        if self.head_kind == "dualcoop":
            positive, negative = text
            extra = self.backbone.attention_pool_mean_token(dense.tokens) if self.config.dualcoop.mean_token else None
            logits, attention = dualcoop_aggregate(dense.tokens, positive, negative, extra=extra)
            return Output(logits=logits, text=positive, attention=attention)
        if self.head_kind == "decoupler":
            guidance = getattr(self, "guidance", None)
            if guidance is None:
                guidance = text.detach()
            features, attention = self.decoupler(dense.tokens, guidance)
            return Output(self.head(features, text), text, features, attention)
        if self.config.method == "zero_shot" and self.config.zero_shot_scoring == "dense":
            logits, attention = dense_pool_scores(dense.tokens, text, float(self.head.log_temperature.exp()))
            if self.head.bias is not None:
                logits = logits + self.head.bias
            return Output(logits=logits, text=text, attention=attention)
        return Output(logits=self.head(dense.pooled, text), text=text)

    def _double_grained(self, dense: Dense, global_text: torch.Tensor, local_text: torch.Tensor) -> Output:
        settings = self.config.taidpt
        is_text = isinstance(dense, TextDense)
        spatial = settings.text_spatial_scale if is_text else settings.image_spatial_scale
        global_logits, local_logits, attention = double_grained_scores(
            dense.pooled, dense.tokens, global_text, local_text, settings.scale, spatial,
            dense.mask if is_text else None)
        weight = settings.global_weight
        logits = weight * global_logits + (1 - weight) * local_logits
        return Output(logits=logits, text=global_text, attention=attention, parts=(global_logits, local_logits))

    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def checkpoint_buffers(self) -> List[str]:
        """Learned state that is not a parameter: the DSRB prototypes."""
        return [name for name, _ in self.named_buffers() if name.startswith("blending.")]
