"""The typed experiment config read by the tools: YAML files in configs/ plus key=value overrides."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, Literal, Optional, Sequence, Tuple

import yaml

from clipml.backbones.config import BackboneConfig
from clipml.config import config_from_dict, config_to_dict, require
from clipml.data.captions import CaptionConfig
from clipml.errors import ClipmlError, ConfigError
from clipml.losses import REFERENCE_REDUCTION
from clipml.model import ModelConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class DataConfig:
    dataset: str = "synthetic"  # a name of clipml.data.available_datasets()
    root: Optional[str] = None  # the dataset folder (a manifest file or folder for "manifest")
    # Passed to the dataset loader; {} clears. manifest: `unlisted` (unknown or negative) must say
    # what the classes a record leaves out are, unless every record lists every class.
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)
    train_split: str = "train"  # the split trained on (and the validation part is carved from)
    test_split: str = "test"  # the split of the final test evaluation
    # p of the simulated partial-label protocol, in (0, 1], on datasets with complete labels;
    # 1.0 keeps all training labels. Partial labels of the data itself: see partial_labels.
    known_ratio: float = 0.1
    # A training split whose own labels are partial (a manifest with unknown entries): "keep"
    # them as they are (known_ratio is not applied) or "simulate" known_ratio's protocol on top.
    partial_labels: Literal["keep", "simulate"] = "keep"
    mask_seed: int = 1  # mask and validation-carve seed; 0 reproduces the published protocol's masks, as configs/ set
    mask_dir: Optional[str] = "masks"  # mask files, shared by every run and method
    mask_file: Optional[str] = None  # an external partial-label matrix (SST/SARB/DSRB convention)
    val_fraction: float = 0.1  # carved from the training split with mask_seed, for model selection
    # Your own validation split instead of a carved part: a split name of the dataset (manifest: the
    # <name>.jsonl or .csv in the root folder) or, for manifest, a manifest file; labels used as given
    val_split: Optional[str] = None
    augment: Literal["none", "resized_crop", "multiscale_crop", "randaugment"] = "resized_crop"  # training policy
    batch_size: int = 32  # training batch (the global batch under torchrun)
    eval_batch_size: int = 64  # batch of evaluation and feature-cache extraction
    workers: int = 2  # DataLoader worker processes that decode images
    # Feature cache (clipml.engine.cache): the frozen image tower runs once per image and view.
    cache: bool = False
    # One folder per key: backbone, size, dense mode, transform, image list, image folder and each
    # image file's size and modification time (replaced images get a new cache).
    cache_dir: str = "cache"
    cache_views: int = 1  # view 0: the eval transform; views 1..: `augment`, seeded by cache_seed
    cache_seed: int = 0  # seed of the augmented cached views
    cache_device: Literal["cpu", "cuda"] = "cpu"  # "cuda": hold the train/val cache on the GPU if it fits
    # Text-as-image training (model.method=taidpt): captions replace the training images.
    captions: CaptionConfig = dataclasses.field(default_factory=CaptionConfig)

    def __post_init__(self) -> None:
        require(bool(self.dataset), "data.dataset", self.dataset, "a dataset name")
        require(0.0 < self.known_ratio <= 1.0, "data.known_ratio (the proportion p of known labels)",
                self.known_ratio, "in (0, 1]")
        require(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "in (0, 1)")
        for key in ("train_split", "test_split"):
            require(bool(getattr(self, key)), f"data.{key}", getattr(self, key), "a split name")
        if self.val_split is not None and self.val_split in (self.train_split, self.test_split):
            raise ConfigError(f"data.val_split={self.val_split!r} is also the training or test split; "
                              f"validation must be other images")
        for key in ("mask_seed", "cache_seed"):  # numpy seeds
            require(0 <= getattr(self, key) < 2**32, f"data.{key}", getattr(self, key), "in [0, 2**32)")
        for key in ("batch_size", "eval_batch_size", "cache_views"):
            require(getattr(self, key) >= 1, f"data.{key}", getattr(self, key), "at least 1")
        require(self.workers >= 0, "data.workers", self.workers, ">= 0 (0: decode in the main process)")
        if self.cache_views > 1 and self.augment == "none":
            raise ConfigError(f"data.cache_views={self.cache_views} asks for augmented views but data.augment "
                              f"is 'none'")


@dataclasses.dataclass
class LossConfig:
    name: Literal["bce", "asl", "ranking"] = "asl"  # DualCoOp: asl on S+ − S− is its two-way ASL; TaI-DPT: ranking
    gamma_pos: float = 1.0  # ASL focusing on positives (γ+)
    gamma_neg: float = 2.0  # ASL focusing on negatives (γ−): 2 in DualCoOp, 4 in the ASL paper
    clip: float = 0.05  # ASL probability margin for negatives
    margin: float = 1.0  # ranking: a known positive should score this much above a known negative
    # null: the loss's reference reduction, resolved when the experiment config is built:
    # asl sums over known entries (ASL's and DualCoOp's code), bce averages over them (METHODS §5),
    # ranking averages over images (TaI-DPT's code).
    reduction: Optional[Literal["mean", "sum"]] = None
    # ASL on soft targets (DSRB's blended entries; hard targets are unaffected): "per_term" gives
    # y·log p and (1−y)·log(1−p_m) each its own focusing weight; "mixed" puts one weight
    # (1−p_t)^(γ+·y + γ−·(1−y)) on the mixed term, as ASL's code computes for a soft y.
    soft_focusing: Literal["per_term", "mixed"] = "per_term"
    # Factor on the whole training loss (DualCoOp's --loss_w); under SGD it scales every update
    # but weight decay's, like a learning rate on the loss gradient alone.
    weight: float = 1.0
    eps: float = 1e-8  # asl: floor of the probabilities inside the logs (DualCoOp's code: 1e-6)

    def __post_init__(self) -> None:
        require(self.weight > 0, "loss.weight", self.weight, "> 0")
        require(0 <= self.eps < 1, "loss.eps", self.eps, "in [0, 1)")
        for key in ("gamma_pos", "gamma_neg", "margin"):
            require(getattr(self, key) >= 0, f"loss.{key}", getattr(self, key), ">= 0")
        require(0 <= self.clip < 1, "loss.clip", self.clip, "in [0, 1) (0: no margin)")


@dataclasses.dataclass
class EvalConfig:
    """How results are scored; a table compared with a paper uses that paper's AP (METHODS §9)."""

    # envelope: VOC 2010+ all-point AP (SARB/DSRB code); raw: non-interpolated AP (DualCoOp's and
    # ASL's code, scikit-learn's average_precision_score); voc07: VOC 2007's 11-point AP.
    ap: Literal["envelope", "raw", "voc07"] = "envelope"
    # reference: a top-3 class counts only if its logit is >= 0 (ML-GCN/SARB/DSRB code); plain: any.
    top3: Literal["reference", "plain"] = "reference"
    # predict's per-class thresholds (chosen on the validation split, stored in the checkpoint):
    # a class needs this many known validation positives for a threshold of its own, else it
    # takes the one maximising the pooled F1.
    threshold_min_positives: int = 5
    # No threshold below this calibrated probability (Platt scaling on the validation split).
    threshold_floor: float = 0.1
    # Score at most this many classes at a time (methods that score classes separately): bounds the
    # [B, C, N] attention and [B, C, D] per-class features of thousands of classes; the scores are
    # the same. 0: all classes at once.
    class_chunk: int = 0

    def __post_init__(self) -> None:
        if self.threshold_min_positives < 1:
            raise ConfigError(f"eval.threshold_min_positives must be at least 1, got {self.threshold_min_positives}")
        if not 0.0 <= self.threshold_floor < 1.0:
            raise ConfigError(f"eval.threshold_floor must be a probability in [0, 1), got {self.threshold_floor}")
        require(self.class_chunk >= 0, "eval.class_chunk", self.class_chunk, ">= 0 (0: all classes at once)")


@dataclasses.dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"  # optimizer
    lr: float = 0.002  # peak learning rate of the cosine schedule
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4  # not applied to scalars (temperatures, blend weights)
    epochs: int = 50  # epochs are counted from 1 in every output
    warmup_epochs: float = 1.0  # warm-up before the cosine decay (per_step: fractions allowed)
    # per_step: linear warm-up, then cosine, updated every step. dassl: Dassl's build_lr_scheduler
    # (DualCoOp's and TaI-DPT's code): warmup_lr during the warm-up epochs, then cosine over
    # `epochs` starting from lr, changed once per epoch.
    schedule: Literal["per_step", "dassl"] = "per_step"
    warmup_lr: float = 1e-5  # dassl: the constant rate of the warm-up epochs (Dassl's WARMUP_CONS_LR)
    grad_clip: Optional[float] = None  # max gradient norm
    # The semantic decoupler's learning rate is lr times this (1: one rate for all, as the papers).
    # On the lab it fits the known labels faster than the prompts do (benchmarks/results/quality.md).
    decoupler_lr_scale: float = 1.0
    # Classes a training step runs through the text tower and the heads. "known": those with a known
    # label in the batch, which gives the full pass's gradients exactly (the loss of the others is 0)
    # where the method scores classes separately and PPRB is off (an error elsewhere); "all": every
    # class; "auto": "known" where it is exact, else "all".
    train_classes: Literal["auto", "known", "all"] = "auto"
    # Class sampling (DualCoOp's num_train_cls), an approximation: each step encodes the batch's known
    # classes plus random other classes up to this many (never fewer than the known ones); for
    # training where "known" is not exact (PPRB draws unknown classes from these). 0: off.
    sampled_classes: int = 0

    def __post_init__(self) -> None:
        require(self.lr > 0, "optim.lr", self.lr, "> 0")
        require(0 <= self.momentum < 1, "optim.momentum", self.momentum, "in [0, 1)")
        require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, ">= 0")
        require(self.epochs >= 1, "optim.epochs", self.epochs, "at least 1")
        require(0 <= self.warmup_epochs <= self.epochs, "optim.warmup_epochs", self.warmup_epochs,
                f"in [0, optim.epochs={self.epochs}]")
        require(self.warmup_lr > 0, "optim.warmup_lr", self.warmup_lr, "> 0")
        require(self.grad_clip is None or self.grad_clip > 0, "optim.grad_clip", self.grad_clip, "> 0 or null")
        require(self.decoupler_lr_scale > 0, "optim.decoupler_lr_scale", self.decoupler_lr_scale, "> 0")
        require(self.sampled_classes >= 0, "optim.sampled_classes", self.sampled_classes, ">= 0 (0: off)")
        if self.sampled_classes and self.train_classes == "all":
            raise ConfigError(f"optim.sampled_classes={self.sampled_classes} samples classes, but "
                              f"optim.train_classes='all' asks for every class; set one of them")
        if self.schedule == "dassl" and self.warmup_epochs != int(self.warmup_epochs):
            raise ConfigError(f"optim.schedule=dassl counts warm-up in whole epochs; got optim.warmup_epochs="
                              f"{self.warmup_epochs}")


@dataclasses.dataclass
class TrainOutputsConfig:
    """What a training run writes beside its checkpoints, log.jsonl and summary. Not part of the
    experiment (RUN_ONLY_KEYS): a run resumes under other values here."""

    # TensorBoard scalars per epoch (train/loss, train/lr, val/mAP, ...) in <run>/tensorboard/:
    # auto when the tensorboard package is installed; true needs it (pip install tensorboard); false: none
    tensorboard: Literal["auto", True, False] = "auto"
    report: bool = True  # write <run>/report.html at the end (clipml.report; also clipml-report RUN_DIR)
    # test images with attention overlays in the report (methods with spatial attention; needs matplotlib)
    report_images: int = 4

    def __post_init__(self) -> None:
        if self.report_images < 0:
            raise ConfigError(f"train.report_images must be >= 0, got {self.report_images}")


@dataclasses.dataclass
class ExperimentConfig:
    name: str = "experiment"  # names the run folder (see output_dir)
    seed: int = 0  # initialisation, shuffling and augmentation (not the mask: data.mask_seed)
    output_dir: str = "runs/{name}"  # the run folder; {name} is replaced by name
    device: str = "auto"  # cpu, cuda, cuda:N, mps or "auto": CUDA when available
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    # A prompt checkpoint (e.g. another run's prompts.safetensors) whose tensors start this run's
    # training, classes matched by name; the optimizer and schedule start fresh (train_prompts --init-from)
    init_from: Optional[str] = None
    train: TrainOutputsConfig = dataclasses.field(default_factory=TrainOutputsConfig)

    def __post_init__(self) -> None:
        from clipml.devices import parse_device

        require(bool(self.name), "name", self.name, "a run name")
        require(0 <= self.seed < 2**32, "seed", self.seed, "in [0, 2**32)")
        try:
            self.run_dir()
        except (KeyError, IndexError, ValueError):
            raise ConfigError(f"output_dir {self.output_dir!r} may hold {{name}} and no other field") from None
        if self.device != "auto":  # what this machine has is checked when the run starts
            uses_cuda = parse_device(self.device).type == "cuda"
            if self.data.cache and self.data.cache_device == "cuda" and not uses_cuda:
                raise ConfigError(f"data.cache_device=cuda holds the cache on the GPU, but device={self.device!r}; "
                                  f"set device=cuda or data.cache_device=cpu")
        require(self.init_from is None or bool(self.init_from), "init_from", self.init_from,
                "a checkpoint path or null")
        check_class_subsets(self)
        if self.loss.reduction is None:  # each loss's own reference reduction (see LossConfig)
            self.loss = dataclasses.replace(self.loss, reduction=REFERENCE_REDUCTION[self.loss.name])

    def run_dir(self) -> str:
        return self.output_dir.format(name=self.name)


def check_class_subsets(cfg: ExperimentConfig) -> None:
    """optim.train_classes=known must give the full pass's gradients; class sampling and
    evaluation chunks need a method that scores classes separately."""
    from clipml.methods import get_method
    from clipml.methods.terms import class_subset_obstacle

    obstacle = class_subset_obstacle(cfg.model)
    if cfg.optim.train_classes == "known" and obstacle:
        raise ConfigError(f"optim.train_classes=known gives the full pass's gradients only where no class is "
                          f"coupled to others, but {obstacle}: use optim.train_classes=auto or all (or "
                          f"optim.sampled_classes=K, an approximation)")
    separate = get_method(cfg.model.method).class_subsets
    for key, value in (("optim.sampled_classes", cfg.optim.sampled_classes), ("eval.class_chunk", cfg.eval.class_chunk)):
        if value and not separate:
            raise ConfigError(f"{key}={value} scores a subset of the classes, but method {cfg.model.method!r} "
                              f"scores all classes together; set {key}=0")


def saved_config(saved: Dict[str, Any], source: str = "") -> ExperimentConfig:
    """The ExperimentConfig of a saved config (a run's config.yaml, a checkpoint's metadata). Keys
    added since it was written take their defaults; one written before methods had their own
    sections (all ``model.*`` keys flat) is read in today's layout (`upgrade_model_dict`)."""
    from clipml.methods import upgrade_model_dict

    if isinstance(saved.get("model"), dict):
        saved = dict(saved, model=upgrade_model_dict(saved["model"], ModelConfig.method))
    return config_from_dict(ExperimentConfig, saved, source=source)


# Keys that say where or how fast a run goes, not what it computes: resuming a run, reading back a
# finished one (train, sweep) ignores them. Every other key is part of the experiment's identity.
RUN_ONLY_KEYS = ("name", "output_dir", "device", "data.workers", "data.eval_batch_size", "data.cache_dir",
                 "data.cache_device", "eval.class_chunk", "train.tensorboard", "train.report", "train.report_images")


def _leaves(cfg: Any, prefix: str = "") -> Dict[str, Any]:
    """Dotted key -> plain value of every key of a config but the RUN_ONLY_KEYS."""
    out: Dict[str, Any] = {}
    for field in dataclasses.fields(cfg):
        key, value = prefix + field.name, getattr(cfg, field.name)
        if dataclasses.is_dataclass(value):
            out.update(_leaves(value, key + "."))
        elif key not in RUN_ONLY_KEYS:
            out[key] = config_to_dict(value)
    return out


def config_differences(saved: Dict[str, Any], cfg: ExperimentConfig) -> Dict[str, Tuple[Any, Any]]:
    """Key -> (saved value, value in `cfg`) for every key that differs between a run's saved config
    (its config.yaml) and `cfg`, leaving out RUN_ONLY_KEYS. Keys added to clipml since it was
    written take their defaults, so a run from an older version still resumes; a saved config that
    no longer reads differs as a whole (key "config.yaml")."""
    try:
        old = _leaves(saved_config(saved))
    except ClipmlError as error:
        return {"config.yaml": (str(error), None)}
    new = _leaves(cfg)
    return {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key)}


def describe_differences(differences: Dict[str, Tuple[Any, Any]], limit: int = 5) -> str:
    """'key: old -> new, ...' for the first `limit` differing keys."""
    text = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in list(differences.items())[:limit])
    return text + (f" and {len(differences) - limit} more" if len(differences) > limit else "")


def load_experiment(path: Optional[str], overrides: Sequence[str] = (),
                    base: Optional[Tuple[Dict[str, Any], str]] = None) -> ExperimentConfig:
    """An experiment config from a YAML file and ``key=value`` overrides. When the overrides
    switch ``data.dataset``, options the file set for its own dataset that the new one does not
    take are dropped, with a notice (the demo's ``num_images`` does not follow
    ``data.dataset=manifest``); options given on the command line are kept. ``base``: (plain
    config data, where it came from) in place of a file, e.g. a checkpoint's stored config."""
    from clipml.config import load_config
    from clipml.data.registry import available_datasets, option_names

    cfg = load_config(ExperimentConfig, path, overrides, base)
    keys = [text.partition("=")[0].strip() for text in overrides]
    if "data.dataset" not in keys or cfg.data.dataset not in available_datasets():
        return cfg  # an unknown dataset fails with its own error where the data is loaded
    taken = option_names(cfg.data.dataset)
    if taken is None:
        return cfg
    given = {key.split(".")[2] for key in keys if key.startswith("data.options.")}
    for key, text in zip(keys, overrides):
        if key == "data.options":
            given |= set(yaml.safe_load(text.partition("=")[2]) or {})  # a mapping: load_config checked it
    foreign = sorted(set(cfg.data.options) - set(taken) - {"on_undecodable_image"} - given)
    if foreign:
        logger.warning("dropped data.options %s from %s: dataset %r does not take them (give its own as "
                       "data.options.KEY=VALUE)", ", ".join(foreign), path or (base and base[1]), cfg.data.dataset)
        cfg.data.options = {key: value for key, value in cfg.data.options.items() if key not in foreign}
    return cfg
