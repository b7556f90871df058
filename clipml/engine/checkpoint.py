"""Prompt checkpoints (small, self-describing, safetensors + JSON metadata, tensors keyed by
class name) and the trainer's resume state. Nothing is unpickled from either."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import clipml
from clipml.backbones import BackboneConfig, load_backbone
from clipml.devices import select_device
from clipml.errors import CheckpointError
from clipml.experiment import saved_config
from clipml.model import MultiLabelCLIP
from clipml.prompts import ContextPrompts

logger = logging.getLogger(__name__)

IDENTITY_KEYS = ("library", "model", "weights", "embed_dim")


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename, so an interruption never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def _context_learners(model: MultiLabelCLIP) -> Dict[str, ContextPrompts]:
    return {name: module for name, module in model.named_modules() if isinstance(module, ContextPrompts)}


def model_tensors(model: MultiLabelCLIP) -> Dict[str, torch.Tensor]:
    """Every trainable tensor, contexts keyed by class name (`prompts.ctx/<class>`)."""
    tensors: Dict[str, torch.Tensor] = {}
    learners = _context_learners(model)
    for module_name, learner in learners.items():
        for classname, ctx in learner.named_contexts().items():
            key = f"{module_name}.ctx" + (f"/{classname}" if classname else "")
            tensors[key] = ctx
    context_params = {f"{name}.ctx" for name in learners}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad and name not in context_params:
            tensors[name] = parameter.detach()
    buffers = dict(model.named_buffers())
    for name in model.checkpoint_buffers():
        tensors[name] = buffers[name]
    return {key: value.detach().cpu().contiguous() for key, value in tensors.items()}


def save_prompt_checkpoint(path: Union[str, Path], model: MultiLabelCLIP, config: dict,
                           metrics: Optional[dict] = None, thresholds: Optional[dict] = None) -> Path:
    """Write the trainable tensors and the metadata; `thresholds` are the decision thresholds
    chosen on validation (clipml.engine.evaluate.decision_thresholds), which `predict` uses."""
    path = Path(path)
    metadata = {
        "clipml_version": clipml.__version__,
        "method": model.config.method,
        "classes": model.classnames,
        "backbone": model.backbone.identity,
        "config": config,
        "metrics": metrics or {},
    }
    if thresholds is not None:
        metadata["thresholds"] = thresholds
    tensors = model_tensors(model)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"clipml": json.dumps(metadata)}))
    return path


def read_prompt_checkpoint(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a prompt checkpoint; a missing or foreign file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("clipml")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {error}") from None
    if raw is None:
        raise CheckpointError(f"{path} has no clipml metadata: it is not a clipml prompt checkpoint")
    return tensors, json.loads(raw)


def _weights_key(weights: object) -> str:
    """What identifies the weights: a local file's or model folder's content digest
    (`file:<name>:<digest>`, `hf-folder:<name>:<digest>` compare as `<kind>:<digest>`, so the
    same bytes under another name or path match), else the pretrained tag or hub id."""
    kind, _, rest = str(weights).partition(":")
    if kind in ("file", "hf-folder") and ":" in rest:
        return f"{kind}:{rest.rsplit(':', 1)[1]}"
    return str(weights)


def learned_backbone(cfg, metadata: dict) -> BackboneConfig:
    """The backbone config a checkpoint was learned with, whole (dense mode, resize kernel,
    precision and every later key), at the image size its backbone identity records.
    `cfg`: the checkpoint's own ExperimentConfig (from its metadata)."""
    return dataclasses.replace(cfg.backbone, image_size=metadata["backbone"]["image_size"])


def check_backbone(metadata: dict, identity: dict, path: Union[str, Path]) -> None:
    """Refuse a checkpoint learned on another backbone, naming what differs."""
    saved = metadata["backbone"]
    compared = list(IDENTITY_KEYS)
    folders = [str(side.get("weights", "")).startswith("hf-folder:") for side in (saved, identity)]
    if all(folders):
        compared.remove("model")  # a folder's path, not what it holds: the digest says that
    key = lambda name, side: _weights_key(side.get(name)) if name == "weights" else side.get(name)  # noqa: E731
    differences = [f"{name}: checkpoint {saved.get(name)!r}, this backbone {identity.get(name)!r}"
                   for name in compared if key(name, saved) != key(name, identity)]
    if differences:
        raise CheckpointError(f"{path} was learned on another backbone ({'; '.join(differences)})")
    if saved.get("image_size") != identity.get("image_size"):
        logger.warning("%s was learned at %s px, used at %s px", path, saved.get("image_size"), identity.get("image_size"))
    resize = [side.get("pos_embed_resize", "bicubic") for side in (saved, identity)]
    if resize[0] != resize[1]:
        logger.warning("%s was learned with %s positional-embedding resizing, used with %s", path, *resize)
    # An identity holds these keys only where they differ from their defaults.
    kernels = [side.get("interpolation", "bicubic") for side in (saved, identity)]
    if kernels[0] != kernels[1]:
        logger.warning("%s was learned on images resized %s, used with %s resizing", path, *kernels)
    dense = [side.get("dense", "tokens") for side in (saved, identity)]
    if dense[0] != dense[1]:
        logger.warning("%s was learned on dense mode %r, used with %r: its decoupler and attention saw "
                       "other dense features", path, *dense)
    positional = [side.get("attnpool_positional", True) for side in (saved, identity)]
    if positional[0] != positional[1]:
        logger.warning("%s was saved with attnpool_positional=%s, used with %s: its images are scored on other "
                       "features (backbone.attnpool_positional)", path, *positional)


def load_into(model: MultiLabelCLIP, tensors: Dict[str, torch.Tensor], metadata: dict,
              path: Union[str, Path] = "checkpoint") -> Sequence[str]:
    """Load checkpoint tensors into `model`, matching contexts by class name.

    Returns the classes of the model that had no learned context (they get the mean learned
    context, a shared prompt, and a logged notice): the model's class list may differ from the
    checkpoint's, which is how prompts transfer to a new label set.
    """
    check_backbone(metadata, model.backbone.identity, path)
    if metadata["method"] != model.config.method:
        raise CheckpointError(f"{path} holds a {metadata['method']!r} model, not {model.config.method!r}")
    missing_classes: list = []
    for module_name, learner in _context_learners(model).items():
        prefix = f"{module_name}.ctx"
        contexts = {key[len(prefix):].lstrip("/"): value for key, value in tensors.items()
                    if key == prefix or key.startswith(prefix + "/")}
        shape = tuple(learner.ctx.shape[-2:])
        for name, value in contexts.items():
            if tuple(value.shape) != shape:
                raise CheckpointError(
                    f"{path}: context of {name or 'all classes'!r} has shape {tuple(value.shape)}, "
                    f"the model expects {shape} (another context length or text width)"
                )
        missing_classes = learner.load_named_contexts({k: v.to(learner.ctx.device) for k, v in contexts.items()})
    parameters = dict(model.named_parameters())
    parameters.update((name, buffer) for name, buffer in model.named_buffers() if name in model.checkpoint_buffers())
    contexts = tuple(f"{name}.ctx" for name in _context_learners(model))
    class_rows = model.class_rows()
    for key, value in tensors.items():
        if key.split("/")[0] in contexts:
            continue
        if key in class_rows and metadata.get("classes") != model.classnames:
            value = _rows_by_class(value, metadata["classes"], model.classnames)
        if key not in parameters:
            raise CheckpointError(f"{path}: tensor {key!r} has no place in this {model.config.method} model")
        if parameters[key].shape != value.shape:
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(value.shape)}, the model expects {tuple(parameters[key].shape)}"
            )
        with torch.no_grad():
            parameters[key].copy_(value)
    if missing_classes:
        logger.warning("%d classes have no learned context in %s and use the mean context: %s",
                       len(missing_classes), path, ", ".join(missing_classes))
    return missing_classes


def _rows_by_class(value: torch.Tensor, saved: Sequence[str], wanted: Sequence[str]) -> torch.Tensor:
    """Per-class rows (prototypes, learned per-class embeddings) reordered to another class list;
    new classes get zeros, which for `prototype_valid` means "no prototype"."""
    index = {name: i for i, name in enumerate(saved)}
    out = torch.zeros((len(wanted),) + tuple(value.shape[1:]), dtype=value.dtype)
    for i, name in enumerate(wanted):
        if name in index:
            out[i] = value[index[name]]
    return out


def load_model(checkpoint: Union[str, Path], classnames=None, backbone=None, device: str = "cpu") -> MultiLabelCLIP:
    """A model from a prompt checkpoint; `classnames` may differ (prompts transfer by class name).
    `device` may be "auto"; one the machine lacks is a ConfigError before anything is read."""
    device = select_device(device)
    return build_model(*read_prompt_checkpoint(checkpoint), checkpoint, classnames, backbone, device)


def build_model(tensors: Dict[str, torch.Tensor], metadata: dict, checkpoint: Union[str, Path],
                classnames: Optional[Sequence[str]] = None, backbone=None, device: str = "cpu") -> MultiLabelCLIP:
    """`load_model` on a checkpoint already read (`read_prompt_checkpoint`), so that a caller
    that also needs its metadata (thresholds, calibration) reads the file once. `backbone`:
    default, the one the checkpoint was learned on, loaded on `device`."""
    cfg = saved_config(metadata["config"], source=str(checkpoint))  # old flat configs upgraded when read
    if backbone is None:
        backbone = load_backbone(learned_backbone(cfg, metadata), select_device(device))
    model = MultiLabelCLIP(backbone, list(classnames or metadata["classes"]), cfg.model)
    load_into(model, tensors, metadata, checkpoint)
    return model


def save_training_state(path: Union[str, Path], state: dict) -> None:
    """The trainer's resume state: tensors, numbers and strings only (read with weights_only)."""
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_training_state(path: Union[str, Path]) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read training state {path}: {error}") from None
