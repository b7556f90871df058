"""What a method declares (its `Method` subclass), the model output every method returns, and the
helpers several methods share (the cosine head with its scale and bias rule)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch
from torch import nn

from clipml.decoupler import CosineHead
from clipml.errors import ConfigError


@dataclasses.dataclass
class Output:
    logits: torch.Tensor  # [B, C]
    text: torch.Tensor  # [C, D] (the positive prompts for DualCoOp, the global ones for TaI-DPT)
    features: Optional[torch.Tensor] = None  # [B, C, D] per-class visual features (decoupler)
    attention: Optional[torch.Tensor] = None  # [B, C, N] spatial attention, rows sum to 1
    parts: Optional[Tuple[torch.Tensor, ...]] = None  # branch logits that each get the loss (TaI-DPT)


class Method:
    """One method: its prompt learner and scoring head (`build`), how it scores dense features
    (`score`), its config section (`options`, read as ``model.<name>``) and what the trainer,
    checkpoints and tools need to know about it. Registered with ``@register_method``."""

    name: ClassVar[str] = ""
    options: ClassVar[Optional[type]] = None  # dataclass of the section model.<name>; None: no section
    moved: ClassVar[Dict[str, str]] = {}  # flat model.* keys of older configs -> keys of its section
    spatial: ClassVar[bool] = False  # its Output carries attention maps [B, C, N] (visualize, localisation)
    class_features: ClassVar[bool] = False  # its Output carries per-class visual features (DSRB needs them)
    learns_prompts: ClassVar[bool] = True  # it has learned prompts (conditional transport aligns them)
    image_training: ClassVar[bool] = True  # it trains on image features (else `training_source` replaces them)
    tower_scores: ClassVar[bool] = False  # its logits are the tower's own zero-shot logits (predict's rule)
    # Class c's logit depends only on class c's prompt and rows (no coupling across classes), so
    # `score` may run on a subset of classes (`classes`) with the prompt learner called on the same:
    # the trainer then encodes only the classes with a known label in the batch, and evaluation
    # may score classes in chunks (see clipml.engine.classes).
    class_subsets: ClassVar[bool] = False

    def build(self, model: nn.Module) -> None:
        """Attach the prompt learner (``model.prompts``), the head and any other module to `model`;
        their attribute names are the checkpoint's tensor names."""
        raise NotImplementedError

    def score(self, model: nn.Module, dense: Any, text: Any, classes: Optional[torch.Tensor] = None) -> Output:
        """Scores of dense features (`text`: the prompt learner's output). `classes`: the class
        indices `text` holds, in its order (None: all); passed only where `class_subsets`."""
        raise NotImplementedError

    def scaled_module(self, model: nn.Module) -> Optional[nn.Module]:
        """The module trained at lr × optim.decoupler_lr_scale (None: none)."""
        return None

    def class_rows(self, model: nn.Module) -> List[str]:
        """Checkpoint tensors with one row per class (reordered by class name when loaded into
        another class list; new classes get zeros). Contexts are keyed by class name anyway."""
        return []

    def training_source(self, cfg: Any, backbone: Any, split: Any, context: Any, images: Any) -> Any:
        """What the trainer trains on; `images` (the training split's image features) by default."""
        return images

    def summary(self, source: Any) -> Dict[str, Any]:
        """Extra entries of the run summary about the training source."""
        return {}


def logit_scale_and_bias(model: nn.Module, bias: str) -> Tuple[float, Optional[float]]:
    """The cosine head's scale and bias: model.temperature, or with it null the tower's own scale
    and bias (a bias only where the family has one, e.g. sigmoid-trained towers).

    `bias`: "learned" (model.logit_bias, else the tower's), "tower" (only the tower's) or "none"."""
    config, backbone = model.config, model.backbone
    if config.temperature is not None and config.temperature <= 0:
        raise ConfigError(f"model.temperature must be positive (or null: the backbone's own logit scale), "
                          f"got {config.temperature}")
    from_tower = config.temperature is None
    scale = backbone.logit_scale if from_tower else float(config.temperature)
    tower_bias = backbone.logit_bias if from_tower else None
    if bias == "none":
        return scale, None
    if bias == "tower":
        return scale, tower_bias
    return scale, config.logit_bias if config.logit_bias is not None else tower_bias


def cosine_head(model: nn.Module, bias: str = "learned", learnable: Optional[bool] = None) -> CosineHead:
    """τ·cos with `logit_scale_and_bias`'s rule; the temperature learns with model.learn_temperature."""
    scale, value = logit_scale_and_bias(model, bias)
    learned = model.config.learn_temperature if learnable is None else learnable
    return CosineHead(scale, learned, value, learn_bias=bias != "tower")
