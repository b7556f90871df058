"""The synthetic world's captions, the caption source "synthetic" of text-as-image training
(model.method=taidpt): scenes of the world's pretrain stream only, never of the streams that make
the train/val/test splits."""

from __future__ import annotations

import functools
import json
from typing import Any, Dict, List, Tuple

import numpy as np

from clipml.errors import ConfigError
from clipml.lab.world import DATASET, SceneGenerator

DEFAULT_SYNTHETIC_CAPTIONS = 10_000


@functools.lru_cache(maxsize=4)
def _synthetic(num_captions: int, seed: int, options: str) -> Tuple[Tuple[str, ...], np.ndarray, Tuple[str, ...]]:
    """Kept for the process, as the world's splits are: a sweep asks for the same captions per run."""
    generator = SceneGenerator(seed, stream="pretrain", **json.loads(options))
    scenes = [generator.scene(i) for i in range(num_captions)]
    labels = np.stack([scene.labels for scene in scenes]).astype(np.int8)
    labels.flags.writeable = False
    return tuple(scene.caption for scene in scenes), labels, tuple(generator.classes)


def synthetic_captions(num_captions: int = DEFAULT_SYNTHETIC_CAPTIONS, seed: int = 0, **generator_options
                       ) -> Tuple[List[str], np.ndarray, List[str]]:
    """(captions, true labels [N, C_world], world classes) of the first scenes of the synthetic
    world's pretrain stream. Options go to SceneGenerator (image_size, preset, ...)."""
    if num_captions < 1:
        raise ConfigError(f"synthetic captions: num_captions must be at least 1, got {num_captions}")
    captions, labels, classes = _synthetic(int(num_captions), int(seed), json.dumps(generator_options, sort_keys=True))
    return list(captions), labels, list(classes)


def world_captions(dataset: str, dataset_options: Dict[str, Any], **options
                   ) -> Tuple[List[str], np.ndarray, List[str]]:
    """The caption source "synthetic": the world's own settings (seed, image_size, preset, ...) when
    the dataset is the world, unless data.captions.options set theirs."""
    world_options = {}
    if dataset == DATASET:
        world_options = {k: v for k, v in dataset_options.items() if k != "num_images"}
    world_options.update(options)
    return synthetic_captions(**world_options)
