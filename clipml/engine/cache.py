"""A disk cache of the frozen image tower's features: encode each image (and each augmented view)
once, then train every epoch from fp16 arrays instead of re-encoding.

Layout of one cache folder `<cache_dir>/<dataset>-<key hash>/`:

- `tokens.npy`: fp16 [views, images, tokens, dim], the dense features;
- `pooled.npy`: fp16 [views, images, dim], the global feature;
- `meta.json`: the key (what the features depend on), the shapes, and one CRC32 per committed
  chunk of images of one view.

View 0 is the evaluation transform; views 1.. are the training augmentation, each image seeded
from (seed, view, image index), so a cache is reproducible and resuming gives the same bytes.

The folder name is a hash of the key, so a change of backbone, precision, image size, dense mode
(`backbone.dense`), transform, image list, image folder or image files (size and modification
time of each) lands in another folder and is built anew; a stale cache is never read (caches of
format 1, keyed without the files, are never opened again). A folder whose stored key differs from the expected one is refused. A cache
is built in `<folder>.partial/`, chunk by chunk (meta.json records progress), and renamed when
complete: an interrupted build resumes where it stopped. On opening, file sizes are checked and the CRC
of a sample of chunks is recomputed; `verify(full=True)` checks every chunk.

Under `torchrun` the ranks share the extraction: rank 0 creates the partial folder, then rank r
encodes the chunks whose index is r modulo the world size, writing its rows in place and its
chunks' CRCs to `progress-r.json` (rank 0 to meta.json); rank 0 then merges them and renames the
folder. The bytes are those of a one-process build, and a resumed build, with any number of
ranks, skips every chunk any rank committed.

The .npy files are ordinary arrays (`np.load(path, mmap_mode="r")` works), but clipml reads and
writes them with positioned file I/O, not through a memory map: pages touched through a map count
in the process's resident memory, so one epoch over a COCO-sized cache would grow it to the
file's size, while plain reads keep it at one batch (the OS page cache still caches them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from clipml.backbones import Dense, FrozenCLIP
from clipml.data.base import MultiLabelSplit
from clipml.data.loader import ImageLoader, carry_errors, read_image
from clipml.data.sparse import SparseLabels
from clipml.data.transforms import Normalize255, tower_eval_transform, tower_train_transform
from clipml.engine.distributed import DistContext
from clipml.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

FORMAT = 2  # bump when the layout, the meaning of the arrays or the key changes (2: image files in the key)
META, TOKENS, POOLED = "meta.json", "tokens.npy", "pooled.npy"
PROGRESS = "progress-{}.json"  # the chunks committed by rank {} > 0 of a sharded build
DTYPE = np.dtype(np.float16)
SAMPLE_CHUNKS = 4  # chunks whose checksum is recomputed on every open
READ_ROWS = 64  # rows per read when a whole chunk is checked or loaded


def cache_key(split: MultiLabelSplit, backbone: FrozenCLIP, views: int, augment: str, seed: int) -> Dict:
    """Everything the cached features depend on. Augmentation policy and seed matter only when
    there are augmented views, so a one-view cache survives a change of either. The images are
    identified by their folder and by each file's size and modification time (one stat per
    file): replaced images, or other images under the same names elsewhere, get another cache."""
    augmented = views > 1
    return {
        "format": FORMAT,
        "backbone": backbone.identity,
        "precision": backbone.precision,
        "mean": [float(v) for v in backbone.mean],
        "std": [float(v) for v in backbone.std],
        "transform": {
            "eval": f"resize-{backbone.interpolation}-antialias",  # the tower's kernel
            "views": int(views),
            "augment": augment if augmented else None,
            "seed": int(seed) if augmented else None,
        },
        "images": {"dataset": split.dataset, "count": len(split), "fingerprint": split.fingerprint(),
                   "root": str(split.root.resolve()) if split.root is not None else None,
                   "files": split.files_digest()},
    }


def key_digest(key: Dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def union_split(*splits: MultiLabelSplit) -> MultiLabelSplit:
    """The distinct images of `splits` in sorted order (every label unknown: a cache stores none,
    and no [images, classes] matrix is built for them).

    Training and validation parts carved from one split share one cache keyed by this list,
    which stays the same whatever the validation fraction or seed.
    """
    first = splits[0]
    for other in splits[1:]:
        if other.classes != first.classes or type(other) is not type(first) or other.root != first.root:
            raise DataError(f"cannot cache {first.dataset}/{first.split} and {other.dataset}/{other.split} "
                            "together: they differ in class list, image root or kind")
    items = sorted({item for split in splits for item in split.items})
    labels = SparseLabels.unknown((len(items), len(first.classes)))
    return dataclasses.replace(first, split="+".join(s.split for s in splits), items=items, targets=labels)


def _data_offset(path: Path) -> Tuple[int, Tuple[int, ...]]:
    """(byte offset of the data, shape) of an fp16 C-order .npy file."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(handle)
            offset = handle.tell()
    except (OSError, ValueError) as error:
        raise DataError(f"feature cache file {path} cannot be read: {error}") from None
    if dtype != DTYPE or fortran:
        raise DataError(f"feature cache file {path}: expected C-order float16, found {dtype} (fortran={fortran})")
    return offset, tuple(shape)


class _Array:
    """Positioned reads and writes of rows (the first two axes flattened) of one .npy file."""

    def __init__(self, path: Path, writable: bool = False) -> None:
        self.path = path
        self.offset, self.shape = _data_offset(path)
        self.row_shape = self.shape[2:]
        self.row_bytes = int(np.prod(self.row_shape)) * DTYPE.itemsize
        expected = self.offset + self.shape[0] * self.shape[1] * self.row_bytes
        found = path.stat().st_size
        if found != expected:
            raise DataError(f"feature cache file {path} is truncated or corrupt: "
                            f"{found} bytes, expected {expected} for shape {self.shape}")
        self.handle = open(path, "r+b" if writable else "rb", buffering=0)

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows in the given order; sorted contiguous runs are read with one call each."""
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        out = np.empty((len(rows),) + self.row_shape, dtype=DTYPE)
        view = memoryview(out.reshape(-1).view(np.uint8))
        start = 0
        while start < len(ordered):
            stop = start + 1
            while stop < len(ordered) and ordered[stop] == ordered[stop - 1] + 1:
                stop += 1
            self.handle.seek(self.offset + int(ordered[start]) * self.row_bytes)
            wanted = (stop - start) * self.row_bytes
            got = self.handle.readinto(view[start * self.row_bytes:stop * self.row_bytes])
            if got != wanted:
                raise DataError(f"feature cache file {self.path}: short read ({got} of {wanted} bytes)")
            start = stop
        if np.array_equal(order, np.arange(len(rows))):
            return out
        result = np.empty_like(out)
        result[order] = out
        return result

    def write_rows(self, first_row: int, values: np.ndarray) -> None:
        self.handle.seek(self.offset + first_row * self.row_bytes)
        self.handle.write(np.ascontiguousarray(values, dtype=DTYPE).tobytes())

    def sync(self) -> None:
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


class FeatureCache:
    """A complete cache folder for the images of `split` (same image list as when it was built).

    `read(images, views)` returns fp16 (tokens [B, T, D], pooled [B, D]) on the CPU, or on the
    device the cache was `load`ed to.
    """

    def __init__(self, path: Path, split: MultiLabelSplit, expected_key: Optional[Dict] = None) -> None:
        self.path = Path(path)
        self.meta = _read_meta(self.path)
        self.key = self.meta["key"]
        if expected_key is not None and self.key != expected_key:
            raise DataError(f"feature cache {self.path} was built for another key:\n  stored   {self.key}\n"
                            f"  expected {expected_key}\nremove the folder or choose another data.cache_dir")
        if not self.meta.get("complete") or len(self.meta.get("checksums", ())) != self.meta.get("units"):
            raise DataError(f"feature cache {self.path} is incomplete ({self.meta['done']} of "
                            f"{self.meta['units']} chunks); remove it to rebuild")
        if split.fingerprint() != self.key.get("images", {}).get("fingerprint"):
            raise DataError(f"feature cache {self.path} holds another image list than {split.dataset}/{split.split}")
        self.items = list(split.items)
        self.views, self.count = int(self.meta["views"]), len(self.items)
        self.grid = tuple(self.meta["grid"])
        self.tokens = _Array(self.path / TOKENS)
        self.pooled = _Array(self.path / POOLED)
        expected = {"tokens": [self.views, self.count, self.meta["tokens"], self.meta["dim"]],
                    "pooled": [self.views, self.count, self.meta["dim"]]}
        found = {"tokens": list(self.tokens.shape), "pooled": list(self.pooled.shape)}
        if found != expected:
            raise DataError(f"feature cache {self.path}: arrays have shapes {found}, meta.json says {expected}")
        self.resident: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self.verify(full=False)

    # Integrity ------------------------------------------------------------------------------
    def verify(self, full: bool = False) -> None:
        """Recompute the CRC of every chunk (`full`) or of a seeded sample of them."""
        units = len(self.meta["checksums"])
        if full or units <= SAMPLE_CHUNKS:
            chosen = range(units)
        else:
            rest = np.random.RandomState(0).choice(np.arange(1, units - 1), SAMPLE_CHUNKS - 2, replace=False)
            chosen = sorted({0, units - 1, *rest.tolist()})
        for unit in chosen:
            rows = _unit_rows(unit, self.count, self.meta["chunk"])
            crc = [0, 0]
            for start in range(0, len(rows), READ_ROWS):  # a few MB at a time
                part = rows[start:start + READ_ROWS]
                crc = _update_crc(crc, self.tokens.read_rows(part), self.pooled.read_rows(part))
            if crc != self.meta["checksums"][unit]:
                view, first = divmod(int(rows[0]), self.count)
                raise DataError(f"feature cache {self.path} is corrupt: chunk {unit} (view {view}, images "
                                f"{first}..{first + len(rows) - 1}) fails its checksum; remove the folder to rebuild")

    # Access ---------------------------------------------------------------------------------
    def positions(self, split: MultiLabelSplit) -> np.ndarray:
        """Where each image of `split` sits in the cache; every one must be there."""
        index = {item: i for i, item in enumerate(self.items)}
        missing = [item for item in split.items if item not in index]
        if missing:
            raise DataError(f"feature cache {self.path} lacks {len(missing)} images of "
                            f"{split.dataset}/{split.split}, e.g. {missing[0]!r}")
        return np.array([index[item] for item in split.items], dtype=np.int64)

    def read(self, images: np.ndarray, views: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        rows = np.asarray(views, dtype=np.int64) * self.count + np.asarray(images, dtype=np.int64)
        if self.resident is not None:
            tokens, pooled = self.resident
            index = torch.from_numpy(rows).to(tokens.device)
            return tokens[index], pooled[index]
        return torch.from_numpy(self.tokens.read_rows(rows)), torch.from_numpy(self.pooled.read_rows(rows))

    def nbytes(self) -> int:
        return (int(np.prod(self.tokens.shape)) + int(np.prod(self.pooled.shape))) * DTYPE.itemsize

    def load(self, device: str) -> bool:
        """Hold the arrays in memory on `device`, chunk by chunk; False (and stay on disk) if they
        do not fit in the free memory of a CUDA device."""
        device = torch.device(device)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if self.nbytes() > 0.8 * free:
                logger.warning("feature cache %s (%.1f GB) does not fit on %s (%.1f GB free): reading it from disk",
                               self.path, self.nbytes() / 1e9, device, free / 1e9)
                return False
        rows = self.views * self.count
        tokens = torch.empty((rows,) + self.tokens.row_shape, dtype=torch.float16, device=device)
        pooled = torch.empty((rows,) + self.pooled.row_shape, dtype=torch.float16, device=device)
        for start in range(0, rows, READ_ROWS):
            part = np.arange(start, min(rows, start + READ_ROWS))
            tokens[start:start + len(part)] = torch.from_numpy(self.tokens.read_rows(part))
            pooled[start:start + len(part)] = torch.from_numpy(self.pooled.read_rows(part))
        self.resident = (tokens, pooled)
        return True

    def close(self) -> None:
        self.tokens.close()
        self.pooled.close()


# Building ---------------------------------------------------------------------------------------
class _SeededViews(Dataset):
    """Images `images` of `split` through `transform`, the torch RNG seeded per (seed, view, image)
    so every view is reproducible whatever the batch, worker, rank or resume point."""

    def __init__(self, split: MultiLabelSplit, transform: Callable, view: int, seed: int, images: np.ndarray) -> None:
        self.split, self.transform, self.view, self.seed, self.images = split, transform, view, seed, images

    def __len__(self) -> int:
        return len(self.images)

    @carry_errors
    def __getitem__(self, position: int) -> torch.Tensor:
        index = int(self.images[position])
        if self.view == 0:  # the evaluation transform draws no random numbers
            return self.transform(read_image(self.split, index))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(np.random.SeedSequence([self.seed, self.view, index]).generate_state(1)[0]))
            return self.transform(read_image(self.split, index))


def _unit_rows(unit: int, count: int, chunk: int) -> np.ndarray:
    """Rows (view * count + image) of progress unit `unit`: one chunk of images of one view."""
    per_view = (count + chunk - 1) // chunk
    view, part = divmod(unit, per_view)
    first = part * chunk
    return view * count + np.arange(first, min(count, first + chunk))


def _update_crc(crc: List[int], tokens: np.ndarray, pooled: np.ndarray) -> List[int]:
    """CRC32s of a chunk's token and pooled bytes, extended by the next rows."""
    return [zlib.crc32(np.ascontiguousarray(tokens).data, crc[0]),
            zlib.crc32(np.ascontiguousarray(pooled).data, crc[1])]


META_KEYS = ("key", "views", "tokens", "dim", "grid", "chunk", "units", "done", "checksums", "complete")


def _read_meta(path: Path) -> Dict:
    file = path / META
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise DataError(f"feature cache {path} has no {META}; remove the folder to rebuild") from None
    except (OSError, ValueError) as error:
        raise DataError(f"feature cache file {file} cannot be read: {error}") from None
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise DataError(f"feature cache file {file} lacks {missing}; remove the folder to rebuild")
    return meta


def _write_json(file: Path, record: Dict) -> None:
    """Atomic: a crash leaves the old or the new progress record, never half of one."""
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, file)


def _commit(record: Dict, unit: int, crc: List[int]) -> None:
    """Record chunk `unit` as done in a progress record (`checksums[unit]`, null for chunks not done)."""
    checksums = record["checksums"]
    checksums.extend([None] * (unit + 1 - len(checksums)))
    checksums[unit] = crc
    record["done"] += 1


def _is_done(record: Dict, unit: int) -> bool:
    return unit < len(record["checksums"]) and record["checksums"][unit] is not None


def build_feature_cache(
    split: MultiLabelSplit,
    backbone: FrozenCLIP,
    cache_dir: str,
    views: int = 1,
    augment: str = "resized_crop",
    seed: int = 0,
    batch_size: int = 64,
    workers: int = 0,
    chunk_batches: int = 16,
    on_chunk: Optional[Callable[[int, int], None]] = None,
    context: Optional[DistContext] = None,
) -> FeatureCache:
    """The cache of `split`'s features under `cache_dir`: opened if built, else built (or resumed).

    View 0 uses the evaluation transform, views 1..views-1 the training policy `augment`.
    A chunk is `chunk_batches` batches of `batch_size` images of one view; `on_chunk(done, total)`
    is called after each chunk is committed to disk (default: rank 0 logs the progress, about
    twenty lines per build, since a COCO-sized build takes an hour). With a `context` of several
    ranks, every rank must call this: each encodes its share of the chunks into the one cache,
    which all then open.
    """
    if views < 1:
        raise ConfigError(f"data.cache_views must be at least 1, got {views}")
    if views > 1 and augment == "none":
        raise ConfigError(f"data.cache_views={views} asks for augmented views but data.augment is 'none'")
    context = context or DistContext()
    key = cache_key(split, backbone, views, augment, seed)
    final = Path(cache_dir) / f"{split.dataset}-{key_digest(key)}"
    if final.is_dir():
        logger.info("feature cache %s found", final)
        return FeatureCache(final, split, key)

    partial = final.with_name(final.name + ".partial")
    # Every rank waits until the folder, its arrays and meta.json exist (no rank writes progress
    # yet); a stale partial folder of another key stops every rank with rank 0's error.
    context.on_main(lambda: _start_or_resume(partial, key, split, backbone, views, batch_size * chunk_batches))
    _extract_share(partial, split, backbone, augment, seed, batch_size, workers, on_chunk, context)
    context.barrier()  # every rank has committed its share
    if context.is_main:
        _finish(partial, final)
        logger.info("feature cache %s built (%d views of %d images)", final, views, len(split))
    context.barrier()
    return FeatureCache(final, split, key)


class _ChunkLog:
    """The default `on_chunk` of a cache build, on rank 0: logs the chunks done, images per second
    and the time left, about `lines` times over this process's share and at its end. A resumed
    build counts rate and time from where it resumed; under several ranks the share is rank 0's
    and the others run alongside it."""

    def __init__(self, name: str, chunk_images: int, done_before: int, share: int, world: int = 1,
                 lines: int = 20) -> None:
        self.name, self.chunk_images, self.world = name, chunk_images, world
        self.done_before, self.share = done_before, share
        self.step = max(1, -(-share // lines))
        self.start = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        mine = done - self.done_before
        if mine != self.share and mine % self.step:
            return
        per_chunk = max(time.monotonic() - self.start, 1e-9) / mine
        rate, left = self.chunk_images / per_chunk, per_chunk * (self.share - mine)
        if self.world == 1:
            logger.info("feature cache %s: %d of %d chunks, %.0f images/s, %.0f s left",
                        self.name, done, total, rate, left)
        else:
            logger.info("feature cache %s: rank 0 has encoded %d of its %d chunks (%d ranks share %d), "
                        "%.0f images/s per rank, %.0f s left", self.name, mine, self.share, self.world, total,
                        rate, left)


def _extract_share(partial: Path, split: MultiLabelSplit, backbone: FrozenCLIP, augment: str, seed: int,
                   batch_size: int, workers: int, on_chunk: Optional[Callable[[int, int], None]],
                   context: DistContext) -> None:
    """Encode the chunks not yet done whose index is this rank's modulo the world size.

    Rank 0 records its progress in meta.json, rank r in progress-r.json, so no two processes write
    one file. The share depends on nothing another rank changes meanwhile, so ranks need not agree
    on a plan, and a resumed run (of any world size) skips every chunk anyone committed.
    """
    meta = _read_meta(partial)
    units, chunk, views, count = meta["units"], meta["chunk"], meta["views"], len(split)
    if context.is_main:
        record, record_file = meta, partial / META
    else:
        record, record_file = {"checksums": [], "done": 0}, partial / PROGRESS.format(context.rank)
    mine = [unit for unit in range(context.rank, units, context.world) if not _is_done(meta, unit)]
    if on_chunk is None and context.is_main and mine:
        on_chunk = _ChunkLog(partial.name[:-len(".partial")], chunk, meta["done"], len(mine), context.world)
    if context.is_main and meta["done"]:
        logger.info("resuming feature cache %s at %d of %d chunks", partial, meta["done"], units)
    transforms = [tower_eval_transform(backbone.preprocess, normalize=False)]
    if views > 1:
        transforms.append(tower_train_transform(backbone.preprocess, augment, normalize=False))
    normalize = Normalize255(backbone.mean, backbone.std).to(backbone.device)
    pin = backbone.device.type == "cuda"
    done = meta["done"]
    tokens, pooled = _Array(partial / TOKENS, writable=True), _Array(partial / POOLED, writable=True)
    try:
        for view, group in itertools.groupby(mine, key=lambda unit: unit // (units // views)):
            # One loader for this rank's part of a view (workers start once per view, not per chunk);
            # chunks are whole batches (but the view's last), so each chunk takes the next batches.
            group = list(group)
            rows = [_unit_rows(unit, count, chunk) for unit in group]
            dataset = _SeededViews(split, transforms[min(view, 1)], view, seed, np.concatenate(rows) - view * count)
            batches = iter(ImageLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=pin))
            for unit, unit_rows in zip(group, rows):
                crc = _extract_chunk(partial, unit, tokens, pooled, unit_rows,
                                     itertools.islice(batches, -(-len(unit_rows) // batch_size)),
                                     lambda images: backbone.encode_dense(normalize(images)))
                _commit(record, unit, crc)
                _write_json(record_file, record)
                done += 1
                if on_chunk is not None:
                    on_chunk(done, units)
    finally:
        tokens.close()
        pooled.close()


class _HostCopy:
    """The fp16 features of one batch on their way to host memory: on CUDA the copy is queued
    behind the tower without waiting (into pinned memory); `arrays()` waits for it."""

    def __init__(self, dense: Dense) -> None:
        self.tokens = dense.tokens.half().to("cpu", non_blocking=True)
        self.pooled = dense.pooled.half().to("cpu", non_blocking=True)
        self.done = None
        if dense.tokens.is_cuda:
            self.done = torch.cuda.Event()
            self.done.record()

    def arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        if self.done is not None:
            self.done.synchronize()
        return self.tokens.numpy(), self.pooled.numpy()


def _extract_chunk(partial: Path, unit: int, tokens: _Array, pooled: _Array, rows: np.ndarray,
                   batches: Iterable[torch.Tensor], encode: Callable) -> List[int]:
    """Encode and write one chunk batch by batch and flush it to disk; its CRCs are recorded only
    after this returns, so progress never runs ahead of the data, and memory holds two batches.

    Batch k is written after batch k+1 is decoded and queued: on an accelerator the tower works
    on batch k while the CPU decodes the next one and writes the previous one."""
    crc, row = [0, 0], int(rows[0])
    pending: Optional[_HostCopy] = None
    for images in itertools.chain(batches, [None]):
        queued = None
        if images is not None:
            with torch.no_grad():
                queued = _HostCopy(encode(images))
        if pending is not None:
            block_tokens, block_pooled = pending.arrays()
            tokens.write_rows(row, block_tokens)
            pooled.write_rows(row, block_pooled)
            crc = _update_crc(crc, block_tokens, block_pooled)
            row += len(block_tokens)
        pending = queued
    if row != int(rows[-1]) + 1:
        raise DataError(f"feature cache {partial}: chunk {unit} got {row - int(rows[0])} images, "
                        f"expected {len(rows)}")
    tokens.sync()
    pooled.sync()
    return crc


def _fold_progress(partial: Path, meta: Dict) -> None:
    """Move the chunks recorded in other ranks' progress files into meta.json, then drop the files."""
    files = sorted(partial.glob(PROGRESS.format("*")))
    for file in files:
        try:
            checksums = json.loads(file.read_text())["checksums"]
        except (OSError, ValueError, KeyError, TypeError) as error:  # its chunks are simply encoded again
            logger.warning("ignoring unreadable progress file %s: %s", file, error)
            continue
        for unit, crc in enumerate(checksums):
            if crc is not None and not _is_done(meta, unit):
                _commit(meta, unit, crc)
    if files:
        _write_json(partial / META, meta)
        for file in files:
            file.unlink()


def _finish(partial: Path, final: Path) -> None:
    """Gather every rank's progress, check that each chunk is done, and publish the folder."""
    meta = _read_meta(partial)
    _fold_progress(partial, meta)
    missing = [unit for unit in range(meta["units"]) if not _is_done(meta, unit)]
    if missing:
        raise DataError(f"feature cache {partial}: chunks {missing[:10]} of {meta['units']} were not "
                        "extracted by any rank; run again to resume")
    meta["complete"] = True
    _write_json(partial / META, meta)
    os.replace(partial, final)


def _start_or_resume(partial: Path, key: Dict, split: MultiLabelSplit, backbone: FrozenCLIP,
                     views: int, chunk: int) -> None:
    """Make `partial` ready to extract into: resumed (with every rank's recorded progress) if it
    was built with the same settings, else created with its empty arrays and meta.json."""
    if partial.is_dir():
        try:
            meta = _read_meta(partial)
            if meta["key"] == key and meta["chunk"] == chunk:
                _Array(partial / TOKENS).close()  # size check
                _Array(partial / POOLED).close()
                _fold_progress(partial, meta)
                return
            logger.warning("discarding unfinished feature cache %s: built with other settings", partial)
        except DataError as error:
            logger.warning("discarding unreadable unfinished feature cache %s: %s", partial, error)
        shutil.rmtree(partial)
    with torch.no_grad():
        probe = backbone.encode_dense(torch.zeros(1, 3, backbone.image_size, backbone.image_size,
                                                  device=backbone.device))
    tokens, dim = probe.tokens.shape[1], probe.tokens.shape[2]
    partial.mkdir(parents=True)
    for name, shape in ((TOKENS, (views, len(split), tokens, dim)), (POOLED, (views, len(split), dim))):
        array = np.lib.format.open_memmap(partial / name, mode="w+", dtype=DTYPE, shape=shape)
        del array  # a sparse file of the final size; the data is written chunk by chunk
    per_view = (len(split) + chunk - 1) // chunk
    meta = {"key": key, "split": split.split, "views": views, "tokens": int(tokens), "dim": int(dim),
            "grid": list(probe.grid), "chunk": chunk, "units": views * per_view, "done": 0,
            "checksums": [], "complete": False}
    _write_json(partial / META, meta)


__all__ = ["FeatureCache", "build_feature_cache", "cache_key", "key_digest", "union_split"]
