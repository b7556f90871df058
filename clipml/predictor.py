"""Prediction as a library: `Predictor` turns images into per-class probabilities, labels and
attention maps from a prompt checkpoint, a fitted ensemble or zero-shot CLIP on a class list.

This is the one place where `predict`'s rules live, so that a library user gets what the tools
print: a checkpoint's probabilities are Platt-calibrated where it stores a calibration, labels
are cut at its per-class validation thresholds (or a given probability, optionally top-k); an
ensemble's probabilities are its calibrated weighted log-odds; zero-shot probabilities follow
the backbone's own rule (`FrozenCLIP.zero_shot_probabilities`: CLIP's softmax over the classes,
a sigmoid for sigmoid-loss towers). `predict`, `visualize_attention`, `complete_labels` and the
ONNX export are formatting around it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from clipml.data.images import decode_image, open_image
from clipml.data.transforms import Normalize255, tower_eval_transform
from clipml.devices import select_device
from clipml.engine import Progress
from clipml.engine.checkpoint import build_model, read_prompt_checkpoint
from clipml.engine.inference import choose_labels, decision_rule
from clipml.ensemble import Calibration, Ensemble
from clipml.errors import ConfigError, DataError
from clipml.metrics import sigmoid
from clipml.model import ModelConfig, MultiLabelCLIP

ImageLike = Union[Image.Image, str, Path]
Images = Union[ImageLike, Sequence[ImageLike], torch.Tensor]


def zero_shot_config(templates: Union[str, Sequence[str]] = "single", scoring: str = "global",
                     base: Optional[ModelConfig] = None) -> ModelConfig:
    """The zero-shot ModelConfig for a template set name ('single', 'default', 'imagenet',
    'taidpt'), a text file of templates (one a line, '#' comments) or a list of templates;
    `base`: the config whose temperature it takes."""
    from clipml.data import templates as template_set

    if isinstance(templates, str):
        path = Path(templates)
        chosen = ([line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
                  if path.is_file() else template_set(templates))
    else:
        chosen = list(templates)
    if not chosen or not all(isinstance(t, str) and "{}" in t for t in chosen):
        raise ConfigError(f"templates {templates!r}: expected templates with a '{{}}' for the class name")
    from clipml.methods import baseline_config

    return baseline_config(base if base is not None else ModelConfig(), chosen, scoring)


def tower_log_odds(backbone, logits: np.ndarray) -> np.ndarray:
    """The tower's own zero-shot probabilities of `logits` (CLIP: its softmax over the classes),
    written as log-odds so that thresholds read them alike."""
    probabilities = backbone.zero_shot_probabilities(torch.from_numpy(np.asarray(logits)).double())
    probabilities = probabilities.clamp(1e-12, 1 - 1e-12)
    return (probabilities.log() - (-probabilities).log1p()).numpy()


@dataclasses.dataclass
class Predictions:
    """What a Predictor says about a batch of images."""

    images: List[Union[Path, int]]  # the images scored, in input order: paths as given, else their index
    log_odds: np.ndarray  # [N, C] float64: log-odds of the probabilities (sigmoid gives them)
    labels: List[List[str]]  # per image, the classes at or above their threshold, most probable first
    classnames: List[str]
    rule: str  # where the thresholds (and the probabilities) come from, in words
    skipped: List[Tuple[Path, str]]  # files that could not be decoded, with the reason

    @property
    def probabilities(self) -> np.ndarray:
        """[N, C] per-class probabilities."""
        return sigmoid(self.log_odds)


class Predictor:
    """Scores images with one model or several (an ensemble), by predict's rules (module doc).

    Build it with `from_checkpoint`, `from_ensemble` or `zero_shot`; then `predict(images)`
    gives probabilities and labels, `attention(image)` the top classes' attention maps.
    """

    def __init__(self, models: Sequence[MultiLabelCLIP], log_odds: Callable[[List[np.ndarray]], np.ndarray],
                 thresholds: np.ndarray, rule: str, calibration: Optional[Calibration] = None,
                 source: str = "", metadata: Optional[dict] = None) -> None:
        """`log_odds`: the members' logits (each [B, C]) -> log-odds of the probabilities [B, C];
        `thresholds`: per-class thresholds [C] on those log-odds. Prefer the constructors."""
        self.models = list(models)
        self.classnames = list(self.models[0].classnames)
        self._log_odds = log_odds
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.rule = rule
        self.calibration = calibration  # a single checkpoint's Platt scaling (attention maps use it)
        self.source = source  # what the predictor was built from, in words
        self.metadata = metadata or {}  # a single checkpoint's metadata
        self._text: List[Optional[object]] = [None] * len(self.models)
        self._normalize = [Normalize255(m.backbone.mean, m.backbone.std).to(m.backbone.device) for m in self.models]
        for model in self.models:
            model.eval()

    # construction -------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], device: str = "cpu", classnames: Optional[Sequence[str]] = None,
                        backbone=None) -> "Predictor":
        """A prompt checkpoint (read once), or an ensemble spec (.json, see `from_ensemble`).
        `classnames`: another class list (prompts transfer by class name; classes without a
        stored threshold take the global one); `backbone`: an already loaded one to reuse."""
        if str(path).endswith(".json"):
            return cls.from_ensemble(path, device)
        device = select_device(device)
        tensors, metadata = read_prompt_checkpoint(path)
        model = build_model(tensors, metadata, path, classnames, backbone, device)
        thresholds, calibration, rule = decision_rule(metadata, model.classnames, None)
        if model.method.tower_scores:  # a baseline checkpoint: the tower's zero-shot rule, as predict had it
            log_odds = lambda logits: tower_log_odds(model.backbone, calibration.apply(logits[0]))  # noqa: E731
        else:
            log_odds = lambda logits: calibration.apply(logits[0])  # noqa: E731
        return cls([model], log_odds, thresholds, rule, calibration, f"prompt checkpoint {path}", metadata)

    @classmethod
    def from_ensemble(cls, spec: Union[str, Path, Ensemble], device: str = "cpu") -> "Predictor":
        """A fitted ensemble: a spec file (.json from zero_shot_eval --save-ensemble) or an
        `Ensemble`. Each member is scored on its own backbone; probabilities are the calibrated
        weighted log-odds, labelled at probability 0.5 (an ensemble stores no thresholds)."""
        from clipml.engine.ensemble import load_members

        device = select_device(device)
        ensemble = spec if isinstance(spec, Ensemble) else Ensemble.load(spec)
        models = load_members([m.checkpoint for m in ensemble.members], ensemble.classes or None, device)
        thresholds, _, rule = decision_rule({}, models[0].classnames, None)
        where = "" if isinstance(spec, Ensemble) else f" {spec}"
        return cls(models, ensemble.combine, thresholds, f"{rule} (an ensemble stores no per-class thresholds)",
                   source=f"ensemble{where} of {len(models)} checkpoints")

    @classmethod
    def zero_shot(cls, classes: Sequence[str], backbone="toy", templates: Union[str, Sequence[str]] = "single",
                  scoring: str = "global", image_size: Optional[int] = None, device: str = "cpu",
                  base: Optional[ModelConfig] = None) -> "Predictor":
        """Zero-shot CLIP over `classes` with hand-crafted `templates` (see `zero_shot_config`).
        `backbone`: a spec such as 'toy' or 'open_clip:ViT-B-16@openai', a BackboneConfig (e.g. with
        allow_random for clipml's tiny test towers; `image_size` then comes from it), or a loaded FrozenCLIP.
        Probabilities by the tower's rule (CLIP: a softmax, summing to 1 over the classes, so a
        threshold below 0.5 lists several), labelled at 0.5."""
        from clipml.backbones import BackboneConfig, FrozenCLIP, load_backbone

        names = [str(name).strip() for name in classes]
        if not names or any(not name for name in names) or len(set(names)) != len(names):
            raise ConfigError(f"classes: expected distinct non-empty class names, found {list(classes)}")
        config = zero_shot_config(templates, scoring, base)  # a bad template set fails before the backbone loads
        if not isinstance(backbone, FrozenCLIP):
            if not isinstance(backbone, BackboneConfig):
                backbone = BackboneConfig(spec=backbone, image_size=image_size)
            backbone = load_backbone(backbone, select_device(device))
        model = MultiLabelCLIP(backbone, names, config)

        rule = f"probability >= 0.5 ({backbone.zero_shot_rule} zero-shot probabilities)"
        return cls([model], lambda logits: tower_log_odds(backbone, logits[0]), np.zeros(len(names)), rule,
                   source=f"zero-shot, {len(config.templates)} template(s), {scoring} scoring")

    # scoring ------------------------------------------------------------------------------------
    @property
    def model(self) -> MultiLabelCLIP:
        """The model of a single checkpoint or zero-shot predictor."""
        if len(self.models) != 1:
            raise ConfigError(f"{self.source} has {len(self.models)} models; use .models")
        return self.models[0]

    def predict(self, images: Images, *, threshold: Optional[float] = None, top_k: Optional[int] = None,
                batch_size: int = 32, skip_unreadable: bool = False, progress: Progress = None) -> Predictions:
        """Probabilities and labels of `images`: one or a list of PIL images or file paths, or a
        tensor batch [B, 3, S, S] at the backbone's size S (uint8 pixels, or float already
        normalised with the backbone's mean and std). `threshold`: one probability for every
        class instead of the stored thresholds; `top_k`: at most that many labels per image.
        `skip_unreadable`: list undecodable files in `skipped` instead of raising DataError."""
        thresholds, rule = self._decision(threshold)
        if top_k is not None and top_k < 1:
            raise ConfigError(f"top_k must be at least 1, got {top_k}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if isinstance(images, torch.Tensor):
            batch = images.unsqueeze(0) if images.dim() == 3 else images
            kept, skipped = list(range(len(batch))), []
            log_odds = self._score_pixels(batch) if len(batch) else np.zeros((0, len(self.classnames)))
        else:
            if isinstance(images, (str, Path, Image.Image)):
                images = [images]
            kept, skipped, log_odds = self._score_items(list(images), batch_size, skip_unreadable, progress)
        listed = choose_labels(log_odds, thresholds, self.classnames, top_k)
        return Predictions(kept, log_odds, [[name for name, _ in row] for row in listed], list(self.classnames),
                           rule, skipped)

    def _decision(self, threshold: Optional[float]) -> Tuple[np.ndarray, str]:
        if threshold is None:
            return self.thresholds, self.rule
        thresholds, _, rule = decision_rule(self.metadata, self.classnames, threshold)  # says how calibrated
        return thresholds, rule

    def _score_items(self, items: list, batch_size: int, skip_unreadable: bool, progress: Progress):
        kept, skipped, log_odds = [], [], [np.zeros((0, len(self.classnames)))]
        starts = range(0, len(items), batch_size)
        for start in (progress(starts, "predict") if progress is not None else starts):
            decoded = []
            for index, item in enumerate(items[start:start + batch_size], start):
                if isinstance(item, Image.Image):
                    decoded.append(item.convert("RGB"))
                    kept.append(index)
                    continue
                try:
                    decoded.append(decode_image(item))
                except DataError as error:
                    if not skip_unreadable:
                        raise
                    skipped.append((Path(item), str(error)))
                    continue
                kept.append(Path(item))
            if decoded:
                log_odds.append(self._log_odds(self._member_logits(decoded)))
        return kept, skipped, np.concatenate(log_odds)

    def _member_logits(self, images: list) -> List[np.ndarray]:
        """Each member's logits [B, C] of decoded images (members sharing a preprocessing share it)."""
        prepared = {}
        logits = []
        for k, model in enumerate(self.models):
            backbone = model.backbone
            key = backbone.preprocess
            if key not in prepared:
                # uint8 to the device, normalised there (as training and evaluation do).
                transform = tower_eval_transform(backbone.preprocess, normalize=False)
                pixels = torch.stack([transform(image) for image in images]).to(backbone.device)
                prepared[key] = self._normalize[k](pixels)
            logits.append(self._logits(k, prepared[key]))
        return logits

    def _score_pixels(self, batch: torch.Tensor) -> np.ndarray:
        """Log-odds of a tensor batch (see `predict`); every member must share its preprocessing."""
        logits = []
        for k, model in enumerate(self.models):
            backbone = model.backbone
            size = backbone.image_size
            if batch.dim() != 4 or tuple(batch.shape[1:]) != (3, size, size):
                raise DataError(f"image tensor of shape {tuple(batch.shape)}: expected [B, 3, {size}, {size}] "
                                f"(the backbone's input size; pass PIL images or paths to have them resized)")
            if k and backbone.preprocess != self.models[0].backbone.preprocess:
                raise ConfigError(f"{self.source}: its members preprocess images differently; "
                                  "pass PIL images or paths instead of a tensor")
            pixels = batch.to(backbone.device)
            normalised = self._normalize[k](pixels) if pixels.dtype == torch.uint8 else pixels.float()
            logits.append(self._logits(k, normalised))
        return self._log_odds(logits)

    def _logits(self, k: int, normalised: torch.Tensor) -> np.ndarray:
        model = self.models[k]
        with torch.no_grad():
            if self._text[k] is None:
                self._text[k] = model.text_features()  # the prompts do not depend on the image
            return model(normalised, self._text[k]).logits.float().cpu().numpy()

    # attention ----------------------------------------------------------------------------------
    def attention(self, image: ImageLike, top_k: int = 3):
        """Probabilities (as `predict` gives them) and attention maps of the `top_k` most
        probable classes of one image (clipml.visualize.AttentionMaps), for a checkpoint of a
        method with spatial attention (sdm_csp, dualcoop, taidpt)."""
        from clipml.visualize import attention_maps

        if len(self.models) != 1 or self.calibration is None:
            raise ConfigError(f"attention maps need one prompt checkpoint of a method with spatial attention; "
                              f"this predictor is {self.source}")
        if not isinstance(image, Image.Image):
            image = open_image(image)
        return attention_maps(self.model, image, top_k, self.calibration)


__all__ = ["Predictions", "Predictor", "zero_shot_config"]
