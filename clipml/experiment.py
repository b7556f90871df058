"""The typed experiment config read by the tools: YAML files in configs/ plus key=value overrides."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Literal, Optional

from clipml.data.captions import CaptionConfig
from clipml.model import ModelConfig


@dataclasses.dataclass
class BackboneConfig:
    spec: str = "toy"  # see clipml.backbones.load_backbone
    image_size: Optional[int] = None  # None: the model's native size
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast applies on CUDA only
    allow_random: bool = False  # only for clipml's tiny random test models


@dataclasses.dataclass
class DataConfig:
    dataset: str = "synthetic"  # a name of clipml.data.available_datasets()
    root: Optional[str] = None
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)  # passed to the dataset loader
    train_split: str = "train"
    test_split: str = "test"
    known_ratio: float = 0.1  # p of the partial-label protocol; 1.0 keeps all training labels
    mask_seed: int = 1
    mask_dir: Optional[str] = "masks"  # mask files, shared by every run and method
    mask_file: Optional[str] = None  # an external partial-label matrix (SST/SARB/DSRB convention)
    val_fraction: float = 0.1  # carved from the training split with mask_seed, for model selection
    augment: Literal["none", "resized_crop", "multiscale_crop", "randaugment"] = "resized_crop"
    batch_size: int = 32
    eval_batch_size: int = 64
    workers: int = 2
    # Feature cache (clipml.engine.cache): the frozen image tower runs once per image and view.
    cache: bool = False
    cache_dir: str = "cache"  # one folder per key (backbone, size, transform, image list)
    cache_views: int = 1  # view 0: the eval transform; views 1..: `augment`, seeded by cache_seed
    cache_seed: int = 0
    cache_device: Literal["cpu", "cuda"] = "cpu"  # "cuda": hold the train/val cache on the GPU if it fits
    # Text-as-image training (model.method=taidpt): captions replace the training images.
    captions: CaptionConfig = dataclasses.field(default_factory=CaptionConfig)


@dataclasses.dataclass
class LossConfig:
    name: Literal["bce", "asl", "ranking"] = "asl"  # DualCoOp: asl on S+ − S− is its two-way ASL; TaI-DPT: ranking
    gamma_pos: float = 1.0
    gamma_neg: float = 2.0
    clip: float = 0.05
    margin: float = 1.0  # ranking
    reduction: Literal["mean", "sum"] = "sum"


@dataclasses.dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 50
    warmup_epochs: float = 1.0
    grad_clip: Optional[float] = None  # max gradient norm


@dataclasses.dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    output_dir: str = "runs/{name}"
    device: str = "auto"  # "auto": CUDA when available
    backbone: BackboneConfig = dataclasses.field(default_factory=BackboneConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)

    def run_dir(self) -> str:
        return self.output_dir.format(name=self.name)
