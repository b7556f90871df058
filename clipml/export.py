"""ONNX export of a prompt checkpoint for serving: a normalised image batch in, per-class
probabilities out.

The learned prompts do not depend on the image, so their text features are computed once and
folded into the graph as constants: the graph holds only the image tower, the scoring head
(decoupler or spatial aggregation) and the sigmoid, the same probabilities `predict` gives.
What the user must do to an image before the graph (size, mean, std) and the checkpoint's decision
thresholds travel in the ONNX metadata. onnxruntime checks the file against PyTorch before it is
kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Dict, List, Union

import numpy as np
import torch
from torch import nn

import clipml
from clipml.ensemble import Calibration
from clipml.errors import ConfigError, ExportError
from clipml.metrics import sigmoid
from clipml.model import MultiLabelCLIP

TOLERANCE = 1e-4  # largest |ONNX - PyTorch| probability accepted by the check
RESIZE = "{} with antialiasing to image_size x image_size, no crop (clipml.data.transforms.eval_transform)"
SCALING = "RGB, float32, pixel / 255, then (x - mean) / std per channel; layout [batch, 3, image_size, image_size]"


class ImageToProbabilities(nn.Module):
    """A model with its text features frozen as buffers: images [B, 3, S, S] -> probabilities [B, C],
    through the checkpoint's calibration (Platt scale and bias on the logits), as `predict` shows them."""

    def __init__(self, model: MultiLabelCLIP, calibration: Calibration = Calibration()) -> None:
        super().__init__()
        self.model = model.eval()
        self.scale, self.bias = float(calibration.scale), float(calibration.bias)
        with torch.no_grad():
            text = model.text_features()
        # DualCoOp and TaI-DPT score with a pair of text features, the others with one.
        self.pair = isinstance(text, tuple)
        for i, part in enumerate(text if self.pair else (text,)):
            self.register_buffer(f"text_{i}", part.detach().clone())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        text = (self.text_0, self.text_1) if self.pair else self.text_0
        return torch.sigmoid(self.scale * self.model(image, text).logits + self.bias)


@dataclasses.dataclass
class Export:
    path: Path
    classes: List[str]
    preprocessing: Dict[str, object]  # what the user must do to an image before the graph
    max_abs_difference: float  # onnxruntime against PyTorch on the check batch


def preprocessing(model: MultiLabelCLIP) -> Dict[str, object]:
    """The image preparation the exported graph expects, as written into its metadata."""
    prep = model.backbone.preprocess
    return {"image_size": prep.size, "mean": list(prep.mean), "std": list(prep.std),
            "interpolation": prep.interpolation, "resize": RESIZE.format(prep.interpolation), "scaling": SCALING}


def _exporter():
    """onnx and onnxruntime, or one error saying how to install them."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError as error:
        raise ExportError(f"ONNX export needs onnx, onnxruntime and onnxscript ({error}); "
                          "install them with: pip install 'clipml[export]'") from None
    return onnx, onnxruntime


def run_onnx(path: Union[str, Path], images: np.ndarray) -> np.ndarray:
    """Probabilities of normalised images [B, 3, S, S] from an exported file, with onnxruntime."""
    _, onnxruntime = _exporter()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its constant-folding notices are not the user's
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"image": np.ascontiguousarray(images, dtype=np.float32)})[0]


def export_onnx(checkpoint: Union[str, Path], output: Union[str, Path], *, check_batch: int = 3,
                seed: int = 0) -> Export:
    """Write `checkpoint`'s model as ONNX to `output` (batch axis dynamic), then check it with
    onnxruntime against PyTorch on `check_batch` random normalised images (ExportError when any
    probability differs by more than TOLERANCE; nothing is left at `output` then)."""
    from clipml.predictor import Predictor

    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise ConfigError(f"output {output}: name the exported model *.onnx")
    if check_batch < 1:
        raise ConfigError(f"check_batch must be at least 1, got {check_batch}")
    if Path(checkpoint).suffix.lower() == ".json":  # Predictor.from_checkpoint would read it as an ensemble
        raise ConfigError(f"checkpoint {checkpoint}: export takes one prompt checkpoint (.safetensors), "
                          "not an ensemble spec")
    onnx, _ = _exporter()
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")  # predict's model, calibration, thresholds
    model, metadata, thresholds, rule = predictor.model, predictor.metadata, predictor.thresholds, predictor.rule
    if getattr(model, "decoupler", None) is not None:
        # One chunk of all classes: CPU chunking depends on the batch size, a traced graph must not.
        model.decoupler.class_chunk = len(model.classnames)
    wrapper = ImageToProbabilities(model, predictor.calibration).eval()
    size = model.backbone.image_size
    generator = torch.Generator().manual_seed(seed)
    example = torch.randn(2, 3, size, size, generator=generator)
    check = torch.randn(check_batch, 3, size, size, generator=generator)

    fields = {
        "clipml.version": clipml.__version__,
        "clipml.method": metadata["method"],
        "clipml.classes": json.dumps(model.classnames),
        "clipml.preprocessing": json.dumps(preprocessing(model)),
        "clipml.thresholds": json.dumps({name: float(p) for name, p in zip(model.classnames, sigmoid(thresholds))}),
        "clipml.threshold_rule": rule,
    }
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper, (example,), dynamo=True, verbose=False, input_names=["image"],
            output_names=["probabilities"], dynamic_shapes={"image": {0: torch.export.Dim("batch")}})
        expected = wrapper(check).numpy()
    proto = program.model_proto
    proto.doc_string = (f"clipml {metadata['method']} model from {Path(checkpoint).name}: normalised images "
                        f"[batch, 3, {size}, {size}] -> per-class probabilities [batch, {len(model.classnames)}]")
    for key, value in fields.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value

    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.name + ".tmp")  # renamed into place once checked
    onnx.save(proto, str(temporary))
    difference = float(np.abs(run_onnx(temporary, check.numpy()) - expected).max())
    if not difference <= TOLERANCE:
        temporary.unlink()
        raise ExportError(f"the ONNX export of {checkpoint} differs from PyTorch by {difference:.3g} "
                          f"(more than {TOLERANCE:g}) on {check_batch} images; not written")
    os.replace(temporary, output)
    return Export(output, list(model.classnames), preprocessing(model), difference)


def onnx_metadata(path: Union[str, Path]) -> Dict[str, object]:
    """The clipml metadata of an exported file, JSON values decoded (classes, preprocessing, thresholds)."""
    onnx, _ = _exporter()
    proto = onnx.load(str(path), load_external_data=False)
    found = {}
    for entry in proto.metadata_props:
        if entry.key.startswith("clipml."):
            key = entry.key[len("clipml."):]
            found[key] = json.loads(entry.value) if key in ("classes", "preprocessing", "thresholds") else entry.value
    return found


__all__ = ["Export", "ImageToProbabilities", "export_onnx", "onnx_metadata", "preprocessing", "run_onnx"]
