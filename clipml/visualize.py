"""Where a model looks: the per-class spatial attention of a method that has one (the semantic
decoupler, DualCoOp's region aggregation, TaI-DPT's local branch, ...), for the top-k predicted
classes, overlaid on the image."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipml.data.images import open_image
from clipml.data.transforms import Normalize255, tower_eval_transform
from clipml.ensemble import Calibration
from clipml.errors import CheckpointError, ConfigError, DataError
from clipml.methods import spatial_methods
from clipml.model import MultiLabelCLIP

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class AttentionMaps:
    image: np.ndarray  # [H, W, 3] uint8, the image as given (the model saw it resized to S x S)
    classes: List[str]  # the top-k classes, most probable first
    probabilities: List[float]
    maps: np.ndarray  # [k, H, W] attention (sums to 1 over the h x w grid) upsampled bilinearly to the image
    grid: Tuple[int, int]  # (h, w) of the attention before upsampling
    cells: np.ndarray  # [k, h, w] the attention over the feature grid itself (each sums to 1)
    name: str = ""  # the image's file name, shown above the panels
    true_labels: Optional[List[str]] = None  # the image's positive classes, where known (None: unknown)


def attention_maps(model: MultiLabelCLIP, image: Image.Image, top_k: int = 3,
                   calibration: Optional[Calibration] = None) -> AttentionMaps:
    """Probabilities and attention maps of the `top_k` most probable classes for one image;
    `calibration` (a checkpoint's, see clipml.engine.inference.checkpoint_calibration) turns the
    logits into the log-odds of the probabilities shown (default: the plain sigmoid)."""
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    top_k = min(top_k, len(model.classnames))
    backbone = model.backbone
    image = image.convert("RGB")
    pixels = tower_eval_transform(backbone.preprocess, normalize=False)(image)
    normalize = Normalize255(backbone.mean, backbone.std).to(backbone.device)
    model.eval()
    with torch.no_grad():
        dense = model.encode(normalize(pixels.unsqueeze(0)))
        output = model.forward_dense(dense)
    if output.attention is None:
        raise ConfigError(
            f"model.method '{model.config.method}' scores the pooled image feature and has no spatial "
            f"attention; attention maps need a method with one ({', '.join(spatial_methods())})"
        )
    h, w = dense.grid
    logits = output.logits[0].float()
    top = torch.topk(logits, top_k).indices  # by logit: sigmoid saturates to ties at 1.0
    calibration = calibration or Calibration()
    probabilities = torch.sigmoid(torch.as_tensor(calibration.apply(logits.cpu().numpy())))
    grid = output.attention[0, top].float().reshape(top_k, 1, h, w)
    upsampled = F.interpolate(grid, size=(image.height, image.width), mode="bilinear", align_corners=False)
    return AttentionMaps(
        image=np.asarray(image, dtype=np.uint8),
        classes=[model.classnames[i] for i in top.tolist()],
        probabilities=[float(probabilities[i]) for i in top.tolist()],
        maps=upsampled[:, 0].cpu().numpy(),
        grid=(h, w),
        cells=grid[:, 0].cpu().numpy(),
    )


def plot_attention(maps: AttentionMaps, path: Optional[Union[str, Path]] = None, alpha: float = 0.5,
                   panel_inches: float = 3.0, title_inches: float = 0.6, dpi: int = 100,
                   heading_inches: float = 0.25, bar_inches: float = 0.9):
    """The image, then one panel per class: the image with its attention as a heatmap, all on one
    colour scale from 0 to the largest attention of the panels (a colour bar at the right, in
    attention per grid cell), so that maps that are one map look alike. Above the panels the file
    name and, where known, the true labels (one `heading_inches` line each). The figure is
    `panel_inches` x (k + 1) + `bar_inches` wide and `panel_inches` * H / W + `title_inches` +
    the heading lines high; returns it (saved as PNG to `path` when given)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width = maps.image.shape[:2]
    panels = len(maps.classes) + 1
    heading = [line for line in (maps.name, _truth_line(maps.true_labels)) if line]
    top_inches = title_inches + heading_inches * len(heading)
    figure_width = panel_inches * panels + bar_inches
    figure = Figure(figsize=(figure_width, panel_inches * height / width + top_inches), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    axes[0].imshow(maps.image)
    axes[0].set_title("image", fontsize="small")
    top = float(maps.maps.max()) if maps.maps.size and maps.maps.max() > 0 else 1.0
    heat = None
    truth = None if maps.true_labels is None else set(maps.true_labels)
    for ax, name, probability, attention in zip(axes[1:], maps.classes, maps.probabilities, maps.maps):
        ax.imshow(maps.image)
        heat = ax.imshow(attention, cmap="jet", alpha=alpha, vmin=0.0, vmax=top)
        mark = "" if truth is None else (", true" if name in truth else ", not true")
        ax.set_title(f"{name}\np = {probability:.3f}{mark}", fontsize="small")
    for ax in axes:
        ax.set_axis_off()
    figure_height = figure.get_figheight()
    right = 1 - bar_inches / figure_width
    bottom, top_edge = 0.01, 1 - top_inches / figure_height
    figure.subplots_adjust(left=0.01, right=right, bottom=bottom, top=top_edge, wspace=0.04)
    if heading:
        figure.suptitle("\n".join(heading), y=1 - 0.1 * heading_inches / figure_height, va="top",
                        fontsize="small")
    if heat is not None:
        bar = figure.add_axes([right + 0.15 * bar_inches / figure_width, bottom + 0.05 * (top_edge - bottom),
                               0.15 * bar_inches / figure_width, 0.9 * (top_edge - bottom)])
        figure.colorbar(heat, cax=bar).set_label("attention per grid cell", fontsize="x-small")
        bar.tick_params(labelsize="x-small")
    if path is not None:
        figure.savefig(path, dpi=dpi)
    return figure


def _truth_line(true_labels: Optional[Sequence[str]]) -> str:
    if true_labels is None:
        return ""
    return f"true labels: {', '.join(true_labels) if true_labels else '(none)'}"


def manifest_labels(manifest: Union[str, Path], image_paths: Sequence[Union[str, Path]],
                    classnames: Sequence[str]) -> List[Optional[List[str]]]:
    """Per image, its positive classes from a manifest (clipml.data.manifest: JSONL or CSV, image
    paths relative to the manifest's folder; classes from the `classes.txt` beside it, else
    `classnames`), or None for an image the manifest does not list."""
    from clipml.data.base import POSITIVE
    from clipml.data.manifest import load_manifest

    manifest = Path(manifest)
    if not manifest.is_file():
        raise DataError(f"labels manifest not found: {manifest}")
    classes = None if (manifest.parent / "classes.txt").is_file() else list(classnames)
    # only its positives are shown: classes a record leaves out need no rule of their own here
    split = load_manifest(manifest, classes=classes, unlisted="unknown", check_images=False)
    rows = {(manifest.parent / item).resolve(): k for k, item in enumerate(split.items)}
    found: List[Optional[List[str]]] = []
    for path in image_paths:
        row = rows.get(Path(path).resolve())
        if row is None:
            logger.warning("%s is not listed in %s: its true labels are not shown", path, manifest)
        found.append(None if row is None else
                     [name for name, code in zip(split.classes, split.targets.dense([row])[0]) if code == POSITIVE])
    return found


@dataclasses.dataclass
class Visualized:
    written: List[Tuple[Path, Path, AttentionMaps]]  # (image, PNG written, its maps), in input order
    skipped: List[Tuple[Path, str]]  # images that could not be read, with the reason


def visualize_attention(checkpoint: Union[str, Path], image_path: Union[str, Path], output: Union[str, Path],
                        top_k: int = 3, device: str = "cpu", alpha: float = 0.5) -> AttentionMaps:
    """Load a prompt checkpoint, compute the top-k attention maps of one image, save the PNG; an
    unreadable image is a DataError naming it."""
    return visualize_many(checkpoint, [image_path], [output], top_k, device, alpha).written[0][2]


def visualize_many(checkpoint, image_paths: Sequence[Union[str, Path]],
                   outputs: Sequence[Union[str, Path]], top_k: int = 3, device: str = "cpu",
                   alpha: float = 0.5, labels: Optional[Union[str, Path]] = None) -> Visualized:
    """`visualize_attention` for several images with one model load. An image that cannot be
    read (missing, corrupt, not an image) is skipped and listed with the reason, as `predict`
    does; a DataError only if none can be read. Images are opened one at a time. `labels`: a
    manifest giving the images' true labels for the figures (see `manifest_labels`).
    Probabilities are calibrated as `predict` shows them. `checkpoint`: a prompt checkpoint's
    path or a clipml.predictor.Predictor built from one."""
    from clipml.predictor import Predictor

    if len(image_paths) != len(outputs):
        raise ConfigError(f"{len(image_paths)} images but {len(outputs)} output files")
    predictor = checkpoint if isinstance(checkpoint, Predictor) else Predictor.from_checkpoint(checkpoint, device)
    model = predictor.model
    if not model.method.spatial:
        raise CheckpointError(
            f"{predictor.source} holds a '{model.config.method}' model, which scores the pooled image feature "
            f"and has no spatial attention; attention maps need one of: {', '.join(spatial_methods())}"
        )
    truths = manifest_labels(labels, image_paths, model.classnames) if labels else [None] * len(image_paths)
    result = Visualized([], [])
    for path, output, truth in zip(map(Path, image_paths), map(Path, outputs), truths):
        try:
            image = open_image(path)
        except DataError as error:
            result.skipped.append((path, str(error)))
            continue
        maps = predictor.attention(image, top_k)
        maps.name, maps.true_labels = path.name, truth
        plot_attention(maps, output, alpha=alpha)
        logger.info("attention maps of %s for %s written to %s", path, ", ".join(maps.classes), output)
        result.written.append((path, output, maps))
    if not result.written:
        reasons = "; ".join(why for _, why in result.skipped[:3]) + (" ..." if len(result.skipped) > 3 else "")
        raise DataError(f"none of the {len(result.skipped)} image file(s) could be read: {reasons}")
    return result


__all__ = ["AttentionMaps", "Visualized", "attention_maps", "manifest_labels", "plot_attention", "visualize_attention", "visualize_many"]
