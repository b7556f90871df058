"""How class-specific an attention map is (METHODS §11): the pointing game and the attention
mass inside the object, measured against object masks.

An attention map a_c [N] lies on the (h, w) grid of the dense features, row-major. The
evaluation transform resizes the whole image to a square without cropping, so grid cell
(i, j) covers rows [i H/h, (i+1) H/h) and columns [j W/w, (j+1) W/w) of the original H x W
image (fractional edges when the sizes do not divide). A class's objects (the union of its
instance masks) cover a fraction `coverage_cj` of cell j's area, computed exactly by area
averaging.

- Pointing game: a hit when the cell of max a_c overlaps at least one pixel of an object of
  class c (coverage > 0). Ties go to the first maximal cell in row-major order.
- Mass inside: sum_j a_cj * coverage_cj, the attention falling on the class's pixels when
  each cell spreads its weight evenly over its area.

A trial is an (image, class) with at least one object pixel of the class in the image;
labels play no part (an unknown label does not hide the object). Per class: mean over its
trials; overall: mean over the classes with a trial.
"""

from __future__ import annotations

import functools
from typing import Dict, Sequence, Tuple

import numpy as np

from clipml.data.base import ObjectInstance
from clipml.errors import DataError


@functools.lru_cache(maxsize=64)  # a few image sizes recur over a whole split
def axis_weights(pixels: int, cells: int, dtype=np.float64) -> np.ndarray:
    """[cells, pixels]: the fraction of cell i's extent that pixel r covers (rows sum to 1); read-only.

    Measured in units of 1/(pixels * cells) pixel, cell i spans [i * pixels, (i + 1) * pixels)
    and pixel r spans [r * cells, (r + 1) * cells): integer overlaps, exact for any sizes.
    """
    if pixels < 1 or cells < 1:
        raise DataError(f"cannot map {pixels} pixels onto {cells} grid cells")
    i = np.arange(cells)[:, None]
    r = np.arange(pixels)[None, :]
    overlap = np.minimum((r + 1) * cells, (i + 1) * pixels) - np.maximum(r * cells, i * pixels)
    weights = (np.maximum(overlap, 0) / pixels).astype(dtype)
    weights.flags.writeable = False
    return weights


def grid_coverage(mask: np.ndarray, grid: Tuple[int, int]) -> np.ndarray:
    """[h, w]: the fraction of each grid cell's area that `mask` (bool [H, W]) covers.

    The pass over the full-resolution mask runs in float32 (half the time of float64 on a
    COCO-sized mask; errors ~1e-7); a cell without any mask pixel gets exactly 0.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"an object mask must be 2-D [H, W], got shape {mask.shape}")
    h, w = grid
    rows = axis_weights(mask.shape[0], h, np.float32) @ mask.astype(np.float32)  # [h, W]
    return rows.astype(np.float64) @ axis_weights(mask.shape[1], w).T


def class_masks(instances: Sequence[ObjectInstance], num_classes: int) -> Dict[int, np.ndarray]:
    """class index -> union of its objects' masks, for the classes with at least one object pixel."""
    unions: Dict[int, np.ndarray] = {}
    shape = None
    for instance in instances:
        mask = np.asarray(instance.mask, dtype=bool)
        if not 0 <= instance.class_index < num_classes:
            raise DataError(f"object of class index {instance.class_index}, expected 0..{num_classes - 1}")
        if shape is None:
            shape = mask.shape
        if mask.shape != shape or mask.ndim != 2:
            raise DataError(f"object masks of one image must share one 2-D shape: {shape} and {mask.shape}")
        if instance.class_index in unions:
            unions[instance.class_index] |= mask
        else:
            unions[instance.class_index] = mask.copy()
    return {c: union for c, union in unions.items() if union.any()}


def class_coverages(instances: Sequence[ObjectInstance], grid: Tuple[int, int], num_classes: int
                    ) -> Dict[int, np.ndarray]:
    """class index -> the share of each grid cell [h*w] its objects cover, for the classes with a trial
    (computed once per image, whatever number of class chunks then read it)."""
    return {c: grid_coverage(union, grid).reshape(-1) for c, union in class_masks(instances, num_classes).items()}


def _check_grid(shape, grid: Tuple[int, int], ndim: int) -> None:
    """Attention of `ndim` dimensions whose last one is the grid's cells."""
    if len(shape) != ndim or shape[-1] != grid[0] * grid[1]:
        raise DataError(f"attention of shape {tuple(shape)} does not match a {grid[0]}x{grid[1]} grid "
                        f"({'[B, c, ' if ndim == 3 else '[C, '}{grid[0] * grid[1]}])")


def _trial(attention: np.ndarray, coverage: np.ndarray) -> Tuple[float, float]:
    """(pointing-game hit, mass inside) of one class's map [h*w] against its objects' coverage."""
    return float(coverage[int(np.argmax(attention))] > 0), float(attention @ coverage)


def localize_image(attention: np.ndarray, grid: Tuple[int, int], instances: Sequence[ObjectInstance]
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """(hit [C], mass inside [C]) of one image's attention [C, h*w]; nan for classes without a trial."""
    attention = np.asarray(attention, dtype=np.float64)
    _check_grid(attention.shape, grid, ndim=2)
    hits = np.full(attention.shape[0], np.nan)
    mass = np.full(attention.shape[0], np.nan)
    for c, coverage in class_coverages(instances, grid, attention.shape[0]).items():
        hits[c], mass[c] = _trial(attention[c], coverage)
    return hits, mass


class ChunkedLocalization:
    """`localize_image` of a batch whose attention maps arrive a class chunk at a time: each
    image's coverages are computed once, and a chunk's maps leave their device only at the
    (image, class) pairs with a trial. `hits`, `mass`: [B, C], nan without a trial."""

    def __init__(self, instances: Sequence[Sequence[ObjectInstance]], grid: Tuple[int, int], num_classes: int) -> None:
        self.grid = grid
        self.coverages = [class_coverages(objects, grid, num_classes) for objects in instances]
        self.hits = np.full((len(instances), num_classes), np.nan)
        self.mass = np.full((len(instances), num_classes), np.nan)

    def add(self, classes, attention) -> None:
        """One chunk: class indices `classes` [c] and their maps `attention` [B, c, h*w] (torch)."""
        _check_grid(attention.shape, self.grid, ndim=3)
        position = {int(c): j for j, c in enumerate(classes.tolist())}
        pairs = [(row, c, position[c]) for row, coverage in enumerate(self.coverages) for c in coverage
                 if c in position]
        if not pairs:
            return
        rows, chunk_columns = zip(*((row, j) for row, _, j in pairs))
        maps = attention[list(rows), list(chunk_columns)].double().cpu().numpy()  # [trials, h*w]
        for (row, c, _), values in zip(pairs, maps):
            self.hits[row, c], self.mass[row, c] = _trial(values, self.coverages[row][c])


def _class_means(values: np.ndarray) -> np.ndarray:
    """Per column, the mean over its non-nan entries (nan where there are none)."""
    trials = ~np.isnan(values)
    counts = trials.sum(axis=0)
    sums = np.where(trials, values, 0.0).sum(axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def summarize_localization(hits: np.ndarray, mass: np.ndarray) -> Dict[str, object]:
    """Per-class and overall pointing game and mass inside from per-(image, class) values
    [N, C] (nan where the class is absent): `pointing_game`, `mass_inside` (means over the
    classes with a trial), their `_per_class` lists (nan without a trial) and
    `localization_trials` (the number of (image, class) trials)."""
    hits, mass = np.asarray(hits, dtype=np.float64), np.asarray(mass, dtype=np.float64)
    if hits.shape != mass.shape or hits.ndim != 2 or not np.array_equal(np.isnan(hits), np.isnan(mass)):
        raise DataError(f"hits {hits.shape} and mass {mass.shape} must be [images, classes] with the same trials")
    trials = int((~np.isnan(hits)).sum())
    if trials == 0:
        raise DataError("no (image, class) with an object pixel: localisation is undefined")
    per_class_hits, per_class_mass = _class_means(hits), _class_means(mass)
    return {
        "pointing_game": float(np.nanmean(per_class_hits)),
        "pointing_game_per_class": per_class_hits.tolist(),
        "mass_inside": float(np.nanmean(per_class_mass)),
        "mass_inside_per_class": per_class_mass.tolist(),
        "localization_trials": trials,
    }


def class_map_correlation(attention) -> "np.ndarray":
    """Per image, the mean pairwise Pearson correlation of its per-class attention maps
    (attention [B, C, N], numpy or torch; returns [B]). Near 1: every class looks at the same
    place, i.e. the maps are one map and say nothing class-specific; classes whose map is flat
    (no variance) take no part (nan when fewer than two vary)."""
    correlation = MapCorrelation()
    correlation.add(attention)
    return correlation.result()


class MapCorrelation:
    """`class_map_correlation` of a batch whose maps arrive a class chunk at a time, in [B, N]
    memory whatever the number of classes. With u_c the unit-normalised centred map of a varying
    class (0 for a flat one), the off-diagonal sum of the correlation matrix is
    ||sum_c u_c||^2 - sum_c ||u_c||^2: so per image it keeps sum_c u_c, sum_c ||u_c||^2 and the
    count of varying maps, never the [C, C] matrix."""

    def __init__(self) -> None:
        self.total = self.squares = self.count = None

    def add(self, attention) -> None:
        """One chunk of maps [B, c, N] (numpy or torch; summed in float64 on its device)."""
        import torch

        maps = torch.as_tensor(attention).double()
        if maps.ndim != 3:
            raise DataError(f"class_map_correlation needs attention [images, classes, cells], got {tuple(maps.shape)}")
        centred = maps - maps.mean(dim=2, keepdim=True)
        norms = centred.norm(dim=2, keepdim=True)
        varies = (norms[..., 0] > 1e-12 * maps.abs().amax(dim=2).clamp_min(1e-300)).double()  # [B, c]
        unit = centred / norms.clamp_min(1e-300) * varies[..., None]
        parts = unit.sum(dim=1), (unit * unit).sum(dim=(1, 2)), varies.sum(dim=1)
        if self.total is None:
            self.total, self.squares, self.count = parts
        else:
            if parts[0].shape != self.total.shape:
                raise DataError(f"class_map_correlation: a chunk of maps {tuple(maps.shape)} does not match the "
                                f"earlier chunks' [images, cells] {tuple(self.total.shape)}")
            self.total, self.squares, self.count = self.total + parts[0], self.squares + parts[1], self.count + parts[2]

    def result(self) -> np.ndarray:
        """[B]: each image's mean pairwise correlation over the maps added (nan where fewer than two vary)."""
        import torch

        if self.total is None:
            raise DataError("class_map_correlation: no attention maps were added")
        pairs = self.count * (self.count - 1)
        off_diagonal = (self.total * self.total).sum(dim=1) - self.squares
        return torch.where(pairs > 0, off_diagonal / pairs.clamp_min(1),
                           torch.full_like(pairs, float("nan"))).cpu().numpy()
