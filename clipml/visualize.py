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
from clipml.data.transforms import Normalize255, eval_transform
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


def attention_maps(model: MultiLabelCLIP, image: Image.Image, top_k: int = 3) -> AttentionMaps:
    """Probabilities and attention maps of the `top_k` most probable classes for one image."""
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    top_k = min(top_k, len(model.classnames))
    backbone = model.backbone
    image = image.convert("RGB")
    pixels = eval_transform(backbone.image_size, backbone.mean, backbone.std, normalize=False)(image)
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
    probabilities = torch.sigmoid(logits)
    grid = output.attention[0, top].float().reshape(top_k, 1, h, w)
    upsampled = F.interpolate(grid, size=(image.height, image.width), mode="bilinear", align_corners=False)
    return AttentionMaps(
        image=np.asarray(image, dtype=np.uint8),
        classes=[model.classnames[i] for i in top.tolist()],
        probabilities=[float(probabilities[i]) for i in top.tolist()],
        maps=upsampled[:, 0].cpu().numpy(),
        grid=(h, w),
    )


def plot_attention(maps: AttentionMaps, path: Optional[Union[str, Path]] = None, alpha: float = 0.5,
                   panel_inches: float = 3.0, title_inches: float = 0.6, dpi: int = 100):
    """The image, then one panel per class: the image with its attention as a heatmap (each map
    scaled to its own min..max). The figure is `panel_inches` x (k + 1) wide and
    `panel_inches` * H / W + `title_inches` high; returns it (saved as PNG to `path` when given)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width = maps.image.shape[:2]
    panels = len(maps.classes) + 1
    figure = Figure(figsize=(panel_inches * panels, panel_inches * height / width + title_inches), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    axes[0].imshow(maps.image)
    axes[0].set_title("image", fontsize="small")
    for ax, name, probability, heat in zip(axes[1:], maps.classes, maps.probabilities, maps.maps):
        span = float(heat.max() - heat.min())
        scaled = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
        ax.imshow(maps.image)
        ax.imshow(scaled, cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
        ax.set_title(f"{name}\np = {probability:.3f}", fontsize="small")
    for ax in axes:
        ax.set_axis_off()
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - title_inches / figure.get_figheight(),
                           wspace=0.04)
    if path is not None:
        figure.savefig(path, dpi=dpi)
    return figure


@dataclasses.dataclass
class Visualized:
    written: List[Tuple[Path, Path, AttentionMaps]]  # (image, PNG written, its maps), in input order
    skipped: List[Tuple[Path, str]]  # images that could not be read, with the reason


def visualize_attention(checkpoint: Union[str, Path], image_path: Union[str, Path], output: Union[str, Path],
                        top_k: int = 3, device: str = "cpu", alpha: float = 0.5) -> AttentionMaps:
    """Load a prompt checkpoint, compute the top-k attention maps of one image, save the PNG; an
    unreadable image is a DataError naming it."""
    return visualize_many(checkpoint, [image_path], [output], top_k, device, alpha).written[0][2]


def visualize_many(checkpoint: Union[str, Path], image_paths: Sequence[Union[str, Path]],
                   outputs: Sequence[Union[str, Path]], top_k: int = 3, device: str = "cpu",
                   alpha: float = 0.5) -> Visualized:
    """`visualize_attention` for several images with one model load. An image that cannot be
    read (missing, corrupt, not an image) is skipped and listed with the reason, as `predict`
    does; a DataError only if none can be read. Images are opened one at a time."""
    from clipml.engine.train import load_model

    if len(image_paths) != len(outputs):
        raise ConfigError(f"{len(image_paths)} images but {len(outputs)} output files")
    model = load_model(str(checkpoint), device=device)
    if not model.method.spatial:
        raise CheckpointError(
            f"{checkpoint} holds a '{model.config.method}' model, which scores the pooled image feature "
            f"and has no spatial attention; attention maps need one of: {', '.join(spatial_methods())}"
        )
    result = Visualized([], [])
    for path, output in zip(map(Path, image_paths), map(Path, outputs)):
        try:
            image = open_image(path)
        except DataError as error:
            result.skipped.append((path, str(error)))
            continue
        maps = attention_maps(model, image, top_k)
        plot_attention(maps, output, alpha=alpha)
        logger.info("attention maps of %s for %s written to %s", path, ", ".join(maps.classes), output)
        result.written.append((path, output, maps))
    if not result.written:
        reasons = "; ".join(why for _, why in result.skipped[:3]) + (" ..." if len(result.skipped) > 3 else "")
        raise DataError(f"none of the {len(result.skipped)} image file(s) could be read: {reasons}")
    return result


__all__ = ["AttentionMaps", "Visualized", "attention_maps", "plot_attention", "visualize_attention", "visualize_many"]
