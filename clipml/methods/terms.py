"""Training terms beside a method's own loss: DSRB representation blending (METHODS §6) and
conditional transport (METHODS §7). Each is built from its config section (``model.blending``,
``model.transport``) for the methods it applies to, owns its modules on the model (their names are
the checkpoint's), and is driven by the trainer through three hooks: `on_epoch_start`,
`extra_losses` and the checkpoint state it declares."""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, List, Literal, Optional

import torch
from torch import nn

from clipml.blending import PrototypeBank, RepresentationBlending, category_contrastive, peak_scores
from clipml.config import require
from clipml.errors import ConfigError
from clipml.transport import ConditionalTransport

logger = logging.getLogger(__name__)


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
class Step:
    """Where a training batch is: epoch and batch (0-based), batches per epoch, the epoch's generator."""

    epoch: int
    batch: int = 0
    batches: int = 1
    generator: Optional[torch.Generator] = None


class TrainingTerm:
    """A loss term the trainer adds to the method's loss, with the hooks it calls."""

    may_skip_parameters = False  # some steps leave its parameters unused (distributed training must know)

    def on_epoch_start(self, model: nn.Module, epoch: int, source, seed: int) -> None:
        """Before epoch `epoch` (0-based) trains on `source`; `seed` is the epoch's."""

    def extra_losses(self, model: nn.Module, output, dense, targets: torch.Tensor, known: torch.Tensor, loss_fn,
                     step: Optional[Step], classes: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """Its terms of one batch's loss, added in this order; `step` None: outside a schedule.
        `classes`: the class ids of the output's columns (a class-subset step; None: all classes)."""
        return []

    def checkpoint_buffers(self, model: nn.Module) -> List[str]:
        """Learned state of its modules that is not a parameter (saved and loaded with them)."""
        return []

    def class_rows(self, model: nn.Module) -> List[str]:
        """Its checkpoint tensors with one row per class."""
        return []


def contrastive_share(settings: BlendingConfig, step: Step) -> float:
    """Share of ``contrastive_weight`` applied to this batch. "with_blending": all of it from
    ``start_epoch`` on. "from_start": from the first epoch, that epoch ramped linearly (batch i of
    n gets i / n, the first batch none), as the reference code."""
    if not settings.contrastive_weight:
        return 0.0
    if settings.contrastive_schedule == "from_start":
        return 1.0 if step.epoch >= 1 else step.batch / max(1, step.batches)
    return 1.0 if step.epoch >= settings.start_epoch else 0.0


class Blending(TrainingTerm):
    """DSRB: the IPRB and PPRB blended branches and the category-wise contrastive term, from
    ``model.blending.start_epoch`` on; its α, β and prototypes live in ``model.blending``."""

    may_skip_parameters = True  # α and β go unused before the blending epochs start

    def __init__(self, model: nn.Module, settings: BlendingConfig) -> None:
        self.settings = settings
        if settings.instance or settings.prototype:  # used by the trainer only: evaluation never blends
            model.blending = RepresentationBlending(
                len(model.classnames), model.backbone.embed_dim, settings.instance, settings.prototype,
                max_samples=settings.max_samples, topk=settings.topk, alpha_init=settings.alpha_init,
                beta_init=settings.beta_init, target_grad=settings.target_grad,
            )

    def blending(self, epoch: int) -> bool:
        """Whether the blended branches (and the contrastive term, by default) are on in `epoch`."""
        return epoch >= self.settings.start_epoch

    def on_epoch_start(self, model, epoch, source, seed) -> None:
        settings = self.settings
        due = settings.prototype and (epoch - settings.start_epoch) % max(1, settings.prototype_every) == 0
        if self.blending(epoch) and due:
            refresh_prototypes(model, source, seed=seed + 50_000)

    def extra_losses(self, model, output, dense, targets, known, loss_fn, step, classes=None):
        if step is None:
            return []
        settings, losses = self.settings, []
        if self.blending(step.epoch):
            if settings.instance:
                features, soft, mask = model.blending.instance_blend(output.features, targets, known)
                losses.append(settings.lambda_instance * loss_fn(model.head(features, output.text), soft, mask))
            if settings.prototype:
                peaks = peak_scores(output.attention, dense.tokens, settings.peak)
                features, soft, mask = model.blending.prototype_blend(output.features, targets, known, peaks,
                                                                      dense.grid, step.generator, classes)
                losses.append(settings.lambda_prototype * loss_fn(model.head(features, output.text), soft, mask))
        share = contrastive_share(settings, step)
        if settings.contrastive_weight and share:
            losses.append(share * settings.contrastive_weight * category_contrastive(
                output.features, targets, known, settings.contrastive_form, step.generator))
        return losses

    def checkpoint_buffers(self, model) -> List[str]:
        return [name for name, _ in model.named_buffers() if name.startswith("blending.")]

    def class_rows(self, model) -> List[str]:
        return [name for name in self.checkpoint_buffers(model) if name.startswith("blending.prototype")]


class Transport(TrainingTerm):
    """Conditional transport between the dense map and the known-positive prompts, every step;
    its module (a learned background, if asked for) is ``model.transport``."""

    def __init__(self, model: nn.Module, settings: TransportConfig) -> None:
        self.settings = settings
        model.transport = ConditionalTransport(model.backbone.embed_dim, settings.tau_nav, settings.rho,
                                               settings.background)

    def extra_losses(self, model, output, dense, targets, known, loss_fn, step, classes=None):
        return [self.settings.weight * model.transport(dense.tokens, output.text, targets, known)]


def check_terms(config) -> None:
    """The training terms `config` (a ModelConfig) switches on must be ones its method offers, as
    its registry flags say; checked when the config is read."""
    from clipml.methods.registry import METHODS

    method = METHODS[config.method]
    if config.blending.enabled and not method.class_features:
        offer = sorted(name for name, cls in METHODS.items() if cls.class_features)
        raise ConfigError(f"model.blending needs per-class features: method {' or '.join(offer)}, "
                          f"not {config.method}")
    if config.transport.enabled and not method.learns_prompts:
        raise ConfigError(f"model.transport aligns learnable prompts; {config.method} has none")
    if config.transport.enabled and not method.image_training:
        raise ConfigError(f"model.transport aligns image features with image labels; {config.method} "
                          f"does not train on images")


def class_subset_obstacle(config) -> Optional[str]:
    """Why a training step on the batch's known classes alone (the rest of the logits dropped)
    would not give the full pass's gradients under `config` (a ModelConfig); None: it gives them.

    Every clipml loss and the other terms read only known entries (partial BCE/ASL per entry;
    the ranking loss over known pairs of an image; conditional transport over known positives;
    IPRB, which blends an unknown entry with the same class known positive in another image of the
    batch; the contrastive term over known pairs), so a class with no known entry in the batch
    changes neither loss nor gradient: only the method's scoring and PPRB can couple classes."""
    from clipml.methods.registry import METHODS

    if not METHODS[config.method].class_subsets:
        return f"method {config.method!r} does not score classes separately (its Method.class_subsets is false)"
    if config.blending.prototype:
        return ("model.blending.prototype (PPRB) blends unknown classes drawn from all classes with their "
                "prototypes")
    return None


def build_terms(model: nn.Module) -> List[TrainingTerm]:
    """The training terms `model.config` switches on, checked against what its method offers."""
    config, terms = model.config, []
    check_terms(config)
    if config.blending.enabled:
        terms.append(Blending(model, config.blending))
    if config.transport.enabled:
        terms.append(Transport(model, config.transport))
    return terms


def refresh_prototypes(model: nn.Module, source, seed: int) -> Dict[str, object]:
    """One no-grad pass over the training data to recompute the PPRB prototypes."""
    blend, settings = model.blending, model.config.blending
    bank = PrototypeBank(len(model.classnames), blend.feat_dim, max_samples=blend.max_samples, seed=seed,
                         class_names=model.classnames, zero_row=settings.prototype_zero_row,
                         empty_cells=settings.empty_cells)
    with torch.no_grad():
        text = model.text_features()
        for dense, labels, _ in source.batches(seed=seed, sharded=False):  # every rank: the same prototypes
            output = model.forward_dense(dense, text)
            bank.update(output.features, peak_scores(output.attention, dense.tokens, settings.peak), dense.grid,
                        (labels == 1).float(), labels != -1)
    stats = bank.finalize(blend)
    logger.info("prototypes recomputed: %d of %d (class, quadrant) cells filled",
                stats["valid_cells"], 4 * len(model.classnames))
    return stats
