"""Partial-label masks: the reference simulation protocol, mask files, and imported masks.

Protocol (METHODS §8, as in the SST/SARB/DSRB code): one uniform draw per (image, class)
entry from `numpy.random.RandomState(seed)`, in row-major order over the full [N, C] matrix;
the entry stays known if its draw is < p. Positives and negatives are dropped alike, and the
known sets are nested across p for one seed. With seed 0 this reproduces the reference code's
`np.random.seed(0); np.random.random(labels.shape) < p` exactly, given the same image and class
order. Only training splits should be masked; evaluation keeps full labels. The draws are made a
few MB at a time and only those of the split's stored (known) entries are kept, so masking a sparse
split never builds its [N, C] matrix (`partial_split`).

A mask file (`.npz`, no pickles) holds the known matrix with the dataset identity, split, p,
seed and the split's fingerprint; loading it into a split whose fingerprint differs (other
images, other order, other classes) is an error, never a silent mismatch.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

import numpy as np

from clipml.data._files import read_text
from clipml.data.base import NEGATIVE, POSITIVE, UNKNOWN, MultiLabelSplit
from clipml.data.sparse import CHUNK_ENTRIES, SparseLabels
from clipml.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

PROTOCOL = "uniform-draw-v1"
CONVENTIONS = {
    # external code -> clipml code
    "pm1": {1: POSITIVE, -1: NEGATIVE, 0: UNKNOWN},  # SST/SARB/DSRB: 1 pos, -1 neg, 0 unknown
    "clipml": {1: POSITIVE, 0: NEGATIVE, -1: UNKNOWN},
}


def _check_p(p: float) -> float:
    p = float(p)
    if not 0.0 < p <= 1.0:
        raise ConfigError(f"known-label proportion p must be in (0, 1], got {p}")
    return p


def _mask_chunks(shape: Tuple[int, int], p: float, seed: int) -> Iterator[Tuple[int, np.ndarray]]:
    """(first row, boolean [rows, C]) of the protocol's known matrix, a few MB at a time. The
    generator's draws come out in the same order as one [N, C] call, so the chunks are the
    whole matrix's rows; each holds a multiple of 8 rows, so their packed bits line up too."""
    rows, classes = shape
    rng = np.random.RandomState(seed)
    step = 8 * max(1, CHUNK_ENTRIES // (8 * max(classes, 1)))
    for start in range(0, rows, step):
        yield start, rng.random_sample((min(step, rows - start), classes)) < p


def simulate_known(labels: np.ndarray, p: float, seed: int) -> np.ndarray:
    """Boolean [N, C]: which entries the reference protocol keeps known at proportion `p`."""
    p = _check_p(p)
    shape = np.shape(labels)
    chunks = [chunk for _, chunk in _mask_chunks(shape, p, seed)]
    return np.concatenate(chunks) if chunks else np.zeros(shape, dtype=bool)


def _kept(targets: SparseLabels, start: int, chunk: np.ndarray) -> np.ndarray:
    """Which stored entries of the rows `chunk` covers (from row `start`) it keeps known."""
    where = slice(targets.indptr[start], targets.indptr[start + len(chunk)])
    rows = np.repeat(np.arange(len(chunk)), np.diff(targets.indptr[start:start + len(chunk) + 1]))
    return chunk[rows, targets.indices[where]]


def mask_path(mask_dir: Union[str, Path], split: MultiLabelSplit, p: float, seed: int) -> Path:
    """Where the mask for (dataset, split, p, seed) lives inside `mask_dir`. The name carries the
    split's fingerprint (first 8 digits): two versions of a split (another image list, another
    synthetic world or size) share one folder without clashing."""
    safe = lambda text: re.sub(r"[^A-Za-z0-9._-]+", "_", text)  # noqa: E731
    return Path(mask_dir) / (f"{safe(split.dataset)}_{safe(split.split)}_{split.fingerprint()[:8]}"
                             f"_p{_check_p(p):g}_seed{int(seed)}.npz")


def save_mask(path: Union[str, Path], known: np.ndarray, split: MultiLabelSplit, p: float, seed: int) -> Path:
    """Write a mask file for `split` (atomically, so concurrent runs never read half a file)."""
    known = np.asarray(known, dtype=bool)
    shape = (len(split), split.num_classes)
    if known.shape != shape:
        raise DataError(f"mask shape {known.shape} does not match {split.dataset}/{split.split} {shape}")
    return _write_mask(path, np.packbits(known, axis=None), split, p, seed)


def _write_mask(path: Union[str, Path], packed: np.ndarray, split: MultiLabelSplit, p: float, seed: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez_compressed(
        tmp,
        known=packed,
        shape=np.asarray((len(split), split.num_classes), dtype=np.int64),
        dataset=np.asarray(split.dataset),
        split=np.asarray(split.split),
        p=np.asarray(float(p)),
        seed=np.asarray(int(seed)),
        fingerprint=np.asarray(split.fingerprint()),
        protocol=np.asarray(PROTOCOL),
    )
    os.replace(tmp, path)
    return path


def load_mask(
    path: Union[str, Path], split: MultiLabelSplit, p: Optional[float] = None, seed: Optional[int] = None
) -> np.ndarray:
    """Read a mask file and check it belongs to `split` (and to `p`, `seed` when given)."""
    packed, shape = _read_mask(path, split, p, seed)
    return np.unpackbits(packed, count=shape[0] * shape[1]).astype(bool).reshape(shape)


def _read_mask(path: Union[str, Path], split: MultiLabelSplit, p: Optional[float],
               seed: Optional[int]) -> Tuple[np.ndarray, Tuple[int, int]]:
    """(the packed bits of a mask file, its shape), checked against `split`, `p` and `seed`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = {key: data[key] for key in data.files}
        shape = tuple(int(n) for n in meta["shape"])
        packed = meta["known"]
        stored = {key: meta[key].item() for key in ("dataset", "split", "p", "seed", "fingerprint")}
        if len(shape) != 2 or packed.size != -(-shape[0] * shape[1] // 8):
            raise ValueError(f"{packed.size} packed bytes for shape {shape}")
    except FileNotFoundError:
        raise DataError(f"mask file not found: {path}") from None
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise DataError(f"mask file {path} is not a clipml mask file or is corrupt: {error}") from None
    if stored["fingerprint"] != split.fingerprint() or shape != (len(split), split.num_classes):
        raise DataError(
            f"mask file {path} was made for {stored['dataset']}/{stored['split']} "
            f"({shape[0]} images x {shape[1]} classes, fingerprint {stored['fingerprint']}); "
            f"this split is {split.dataset}/{split.split} ({len(split)} x {split.num_classes}, "
            f"fingerprint {split.fingerprint()}): different images, image order or classes"
        )
    if p is not None and not np.isclose(stored["p"], p, rtol=0, atol=1e-9):
        raise DataError(f"mask file {path} holds p={stored['p']}, expected p={p}")
    if seed is not None and int(stored["seed"]) != int(seed):
        raise DataError(f"mask file {path} holds seed={stored['seed']}, expected seed={seed}")
    return packed, shape


def _kept_from_file(packed: np.ndarray, targets: SparseLabels) -> np.ndarray:
    """Which stored entries a mask file's packed [N, C] bits keep, unpacked a few MB at a time."""
    classes = targets.shape[1]
    step = 8 * max(1, CHUNK_ENTRIES // (8 * max(classes, 1)))
    kept = []
    for start in range(0, targets.shape[0], step):
        rows = min(step, targets.shape[0] - start)
        bits = np.unpackbits(packed[start * classes // 8:], count=rows * classes).astype(bool)
        kept.append(_kept(targets, start, bits.reshape(rows, classes)))
    return np.concatenate(kept) if kept else np.zeros(0, dtype=bool)


def _apply(split: MultiLabelSplit, kept: np.ndarray, source: str) -> MultiLabelSplit:
    """`split` with only the stored entries that `kept` [nnz] marks left known."""
    logger.info(
        "%s/%s: %s keeps %.4f of the labelled entries known (%d of %d)",
        split.dataset, split.split, source, kept.sum() / max(kept.size, 1), kept.sum(), kept.size,
    )
    return split.with_labels(split.targets.keep(kept))


def partial_split(
    split: MultiLabelSplit, p: float, seed: int = 0, mask_dir: Optional[Union[str, Path]] = None
) -> MultiLabelSplit:
    """`split` with the reference protocol's unknowns set to -1.

    With `mask_dir`, the mask is read from its file if present (and checked against the
    split), else simulated and written, so every run and method sees the same labels.
    Entries already unknown in `split` stay unknown. The protocol draws for every one of the
    N x C entries, but a few MB at a time, keeping only the stored entries' draws: the memory
    is that of the sparse labels (plus N x C bits for a mask file, its format).
    """
    p = _check_p(p)
    targets = split.targets
    path = None if mask_dir is None else mask_path(mask_dir, split, p, seed)
    if path is not None and path.exists():
        packed, _ = _read_mask(path, split, p, seed)
        return _apply(split, _kept_from_file(packed, targets), f"mask {path}")
    kept, packed = [], []
    for start, chunk in _mask_chunks(targets.shape, p, seed):
        kept.append(_kept(targets, start, chunk))
        if path is not None:
            packed.append(np.packbits(chunk, axis=None))
    kept = np.concatenate(kept) if kept else np.zeros(0, dtype=bool)
    if path is None:
        return _apply(split, kept, f"p={p:g} seed={seed}")
    _write_mask(path, np.concatenate(packed) if packed else np.zeros(0, dtype=np.uint8), split, p, seed)
    return _apply(split, kept, f"new mask {path}")


_FIELD_SEPARATOR = re.compile(r"\s*,\s*|\s+")
_MAX_REPORTED_LINES = 5


def _read_matrix(path: Path) -> np.ndarray:
    """A `.npy` matrix, or a text one: one row a line, numbers separated by commas or whitespace
    (as the SST/SARB/TaI-DPT files ship: `train_proportion_0.5.txt` is comma-separated)."""
    if not path.is_file():
        raise DataError(f"mask file not found: {path}")
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as error:
            raise DataError(f"mask file {path} is not a numeric label matrix: {error}") from None
    rows, problems, width = [], [], None
    for number, line in enumerate(read_text(path, "mask file").splitlines(), start=1):
        if not line.strip():
            continue
        fields = _FIELD_SEPARATOR.split(line.strip())
        try:
            values = [float(field) for field in fields]
        except ValueError:
            bad = next(field for field in fields if not _is_number(field))
            problems.append(f"line {number}: " + (f"{bad!r} is not a number" if bad else
                                                  "an empty field (two separators in a row or one at an end)"))
            continue
        if width is None:
            width = len(values)
        elif len(values) != width:
            problems.append(f"line {number}: {len(values)} values, expected {width} as on the first row")
            continue
        rows.append(values)
    if problems:
        shown = "; ".join(problems[:_MAX_REPORTED_LINES])
        more = f" (and {len(problems) - _MAX_REPORTED_LINES} more lines)" if len(problems) > _MAX_REPORTED_LINES else ""
        raise DataError(f"mask file {path}: {len(problems)} malformed line(s), expected one row of label codes "
                        f"per line separated by commas or spaces: {shown}{more}")
    if not rows:
        raise DataError(f"mask file {path} holds no row")
    return np.asarray(rows, dtype=np.float64)


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def import_mask(
    path: Union[str, Path], split: MultiLabelSplit, convention: str = "pm1", check_labels: bool = True
) -> MultiLabelSplit:
    """`split` with the labels of an externally produced partial-label matrix.

    `path` is a `.npy` or text matrix (`.txt`, `.csv`: one row per line, values separated by
    commas or whitespace, as the published files ship), one row per image of `split` in its order. `convention="pm1"` reads the SST/SARB/DSRB code's convention (1
    positive, -1 negative, 0 unknown; note: 0 is *not* negative there); `"clipml"` reads 1/0/-1.
    With `check_labels`, every known entry must agree with the split's full labels, which
    catches a different image or class order and a different difficult-object rule.
    """
    if convention not in CONVENTIONS:
        raise ConfigError(f"mask convention must be one of {sorted(CONVENTIONS)}, got {convention!r}")
    path = Path(path)
    raw = _read_matrix(path)
    shape = (len(split), split.num_classes)
    if raw.shape != shape:
        raise DataError(
            f"mask file {path} has shape {raw.shape}, expected {shape} "
            f"({split.dataset}/{split.split}: {len(split)} images x {split.num_classes} classes)"
        )
    codes = CONVENTIONS[convention]
    valid = np.isin(raw, list(codes))
    if not valid.all():
        row, col = np.argwhere(~valid)[0]
        raise DataError(
            f"mask file {path} row {row + 1}, column {col + 1} holds {raw[row, col].item()!r}; "
            f"convention {convention!r} allows only {sorted(codes)}"
        )
    labels = np.full(raw.shape, UNKNOWN, dtype=np.int8)
    for external, code in codes.items():
        labels[raw == external] = code
    if check_labels:  # the file is a dense matrix already: comparing against the dense labels costs less than it
        full = split.targets.dense()
        wrong = (labels != UNKNOWN) & (labels != full)
        if wrong.any():
            row, col = np.argwhere(wrong)[0]
            raise DataError(
                f"mask file {path} does not match {split.dataset}/{split.split}: {int(wrong.sum())} known entries "
                f"disagree with the full labels (first: row {row + 1} '{split.items[row]}', class "
                f"'{split.classes[col]}': file says {labels[row, col]}, split says {full[row, col]}; "
                f"codes 1/0/-1). Check the image and class order, the convention, and for VOC the difficult rule"
            )
    return _imported(split, labels, path)


def _imported(split: MultiLabelSplit, labels: np.ndarray, path: Path) -> MultiLabelSplit:
    known = labels != UNKNOWN
    logger.info(
        "%s/%s: imported mask %s keeps %.4f of the entries known (%d of %d)",
        split.dataset, split.split, path, known.mean(), known.sum(), known.size,
    )
    return split.with_labels(labels)
