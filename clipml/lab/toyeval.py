"""How good a toy CLIP is as a lab for MLR-PL methods: the numbers of its build record.

- zero-shot mAP of the global feature and of the dense map (clipml's own dense scoring,
  `model.zero_shot.scoring=dense`), with the hand-written prompt;
- a full-label linear probe on the global feature: how much the features hold beyond what
  zero-shot prompts read from them (with real CLIP on COCO, fully supervised prompt tuning
  sits over 20 points above zero-shot); its L2 weight is chosen on a validation split;
- the pointing game and attention mass inside (METHODS §11) of the zero-shot dense map.

Everything runs through the library's own paths (load_backbone, the evaluation transform,
ImageFeatureSource), so the record describes what users of the toy get.
"""

from __future__ import annotations

import json
import logging
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from clipml.backbones import FrozenCLIP, load_backbone
from clipml.data.base import MultiLabelSplit
from clipml.data.transforms import tower_eval_transform
from clipml.decoupler import dense_pool_scores
from clipml.engine.features import ImageFeatureSource
from clipml.lab.toyclip import ZERO_SHOT_TEMPLATE, toy_spec
from clipml.lab.world import synthetic_split
from clipml.localization import localize_image, summarize_localization
from clipml.metrics import mean_average_precision

logger = logging.getLogger(__name__)


@torch.no_grad()
def zero_shot_outputs(backbone: FrozenCLIP, split: MultiLabelSplit, batch_size: int = 128
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Tuple[int, int]]:
    """(normalised global features [N, D], global scores [N, C], dense scores [N, C],
    dense attention [N, C, h*w], grid) with the hand-written prompt of every class."""
    text = F.normalize(backbone.encode_text([ZERO_SHOT_TEMPLATE.format(c) for c in split.classes]), dim=-1)
    transform = tower_eval_transform(backbone.preprocess, normalize=False)
    source = ImageFeatureSource(split, backbone, transform, batch_size, workers=0)
    features, global_scores, dense_scores, attention = [], [], [], []
    grid = None
    for dense, _, _ in source.batches():
        pooled = F.normalize(dense.pooled, dim=-1)
        features.append(pooled)
        global_scores.append(pooled @ text.T)
        logits, maps = dense_pool_scores(dense.tokens, text)
        dense_scores.append(logits)
        attention.append(maps.half())  # only argmax and sums are read: half halves the memory
        grid = dense.grid
    cat = lambda parts: torch.cat(parts).float().numpy()  # noqa: E731
    return cat(features), cat(global_scores), cat(dense_scores), cat(attention), grid


def linear_probe_map(train: Tuple[np.ndarray, np.ndarray], val: Tuple[np.ndarray, np.ndarray],
                     test: Tuple[np.ndarray, np.ndarray], weight_decays: Sequence[float] = (1e-5, 1e-4, 1e-3, 1e-2),
                     steps: int = 200) -> Dict[str, float]:
    """One-vs-rest logistic regression on frozen features with full labels (L-BFGS); the L2
    weight with the best validation mAP is reported with its test mAP."""
    def fit(decay: float):
        x, y = torch.from_numpy(train[0]).double(), torch.from_numpy((train[1] == 1).astype(np.float64))
        weight = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(y.shape[1], dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = F.binary_cross_entropy_with_logits(x @ weight + bias, y) + decay * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return lambda features: (torch.from_numpy(features).double() @ weight + bias).detach().numpy()

    best = None
    for decay in weight_decays:
        predict = fit(decay)
        score = mean_average_precision(predict(val[0]), val[1])
        if best is None or score > best[0]:
            best = (score, decay, predict)
    score, decay, predict = best
    return {"linear_probe_map": mean_average_precision(predict(test[0]), test[1]),
            "linear_probe_val_map": score, "linear_probe_weight_decay": decay}


def evaluate_on_preset(backbone: FrozenCLIP, preset: str, train_images: int = 4000, val_images: int = 1000,
                       test_images: int = 2000, seed: int = 0) -> Dict[str, float]:
    """The lab numbers of one backbone on one world (splits of its train/val/test streams)."""
    splits = {name: synthetic_split(name, count, seed=seed, preset=preset)
              for name, count in (("train", train_images), ("val", val_images), ("test", test_images))}
    outputs = {name: zero_shot_outputs(backbone, split) for name, split in splits.items()}
    test = splits["test"]
    features, global_scores, dense_scores, attention, grid = outputs["test"]
    hits, mass = zip(*(localize_image(attention[i], grid, test.instances(i)) for i in range(len(test))))
    localization = summarize_localization(np.stack(hits), np.stack(mass))
    labels = test.labels
    result = {
        "chance": float(labels[:, (labels == 1).any(0)].mean()),
        "zero_shot_global_map": mean_average_precision(global_scores, labels),
        "zero_shot_dense_map": mean_average_precision(dense_scores, labels),
        "pointing_game": localization["pointing_game"],
        "mass_inside": localization["mass_inside"],
        "grid": list(grid),
    }
    result.update(linear_probe_map(*((outputs[name][0], splits[name].labels) for name in ("train", "val", "test"))))
    result["probe_minus_zero_shot"] = result["linear_probe_map"] - result["zero_shot_global_map"]
    result["dense_minus_global"] = result["zero_shot_dense_map"] - result["zero_shot_global_map"]
    return {key: value if "decay" in key or not isinstance(value, float) else round(value, 4)
            for key, value in result.items()}


def evaluate_toy(tower: str, presets: Sequence[str] = ("coco_like", "voc_like"), **sizes) -> Dict[str, Dict]:
    """Evaluate a shipped toy on each world and store the result in its build record."""
    backbone = load_backbone(f"toy-{tower}")
    report = {preset: evaluate_on_preset(backbone, preset, **sizes) for preset in presets}
    spec = toy_spec(tower)
    metadata = json.loads(spec.metadata_path.read_text()) if spec.metadata_path.is_file() else {}
    metadata["evaluation"] = {
        "splits": {"train": sizes.get("train_images", 4000), "val": sizes.get("val_images", 1000),
                   "test": sizes.get("test_images", 2000), "seed": sizes.get("seed", 0)},
        "prompt": ZERO_SHOT_TEMPLATE,
        "image_size": backbone.image_size,
        **report,
    }
    spec.metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    return report
