"""Data-parallel training and sharded feature extraction with 2 CPU processes (gloo) against the
same work in 1 process."""

import contextlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipml.backbones import BackboneConfig, load_backbone
from clipml.lab.world import synthetic_split
from clipml.engine import cache as cache_module
from clipml.engine.cache import POOLED, TOKENS, build_feature_cache
from clipml.engine.distributed import DistContext, global_batches, setup, shard
from test_engine import tiny_config

pytestmark = pytest.mark.integration  # trains end to end: left out of the quick subset

SETTINGS = ["data.options={num_images: 64}", "optim.epochs=2", "loss.reduction=sum", "optim.name=sgd",
            "optim.lr=0.002", "data.batch_size=16", "data.known_ratio=0.5"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from clipml.engine.train import train

    try:
        train(tiny_config(Path(tmp), "name=ddp", *SETTINGS), resume=False)
    finally:
        dist.destroy_process_group()


def test_two_processes_train_like_one(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    from clipml.engine.train import train

    single = train(tiny_config(tmp_path, "name=single", *SETTINGS), resume=False)
    ddp = json.loads((tmp_path / "runs" / "ddp" / "summary.json").read_text())
    assert ddp["zero_shot_test"] == single["zero_shot_test"]  # gathered evaluation is exact
    for ours, theirs in zip(ddp["history"], single["history"]):
        assert abs(ours["loss"] - theirs["loss"]) < 1e-3 * abs(theirs["loss"])
    assert abs(ddp["test"]["mAP"] - single["test"]["mAP"]) < 0.05
    assert abs(ddp["val"]["mAP"] - single["val"]["mAP"]) < 0.05


def test_shards_partition_every_global_batch():
    batches = global_batches(23, 8, shuffle=True, seed=4)
    for index in batches:
        parts = [shard(index, DistContext(rank=r, world=3)) for r in range(3)]
        assert sorted(np.concatenate(parts).tolist()) == sorted(index.tolist())
    assert sorted(np.concatenate(batches).tolist()) == list(range(23))


# Sharded feature extraction -----------------------------------------------------------------------
# 24 images, chunks of 8, 2 views: chunk u is view u // 3, images 8 * (u % 3) .. + 7; rank r of 2
# encodes chunks 0, 2, 4 (r = 0) or 1, 3, 5 (r = 1).
CACHE = dict(views=2, batch_size=4, chunk_batches=2)


def _images(view, *firsts):
    return sorted((view, first + i) for first in firsts for i in range(8))


class Interrupt(Exception):
    pass


@contextlib.contextmanager
def _recording_encodes():
    """The (view, image) pairs that the feature cache encodes in this process (sorted at exit)."""
    opened, encode = [], cache_module._SeededViews.__getitem__

    def record(self, position):
        opened.append((self.view, int(self.images[position])))
        return encode(self, position)

    cache_module._SeededViews.__getitem__ = record
    try:
        yield opened
    finally:
        cache_module._SeededViews.__getitem__ = encode
        opened.sort()


def _build(folder, context=None, stop_after=None, on_chunk=None):
    """Build the test cache and return what this process encoded; with `stop_after`, raise after
    that many chunks of this process."""
    chunks = []

    def count(done, total):
        chunks.append(done)
        if len(chunks) == stop_after:
            raise Interrupt

    backbone = load_backbone(BackboneConfig("open_clip:clipml-tiny-vit", image_size=64, allow_random=True))
    with _recording_encodes() as opened:
        try:
            build_feature_cache(synthetic_split("train", num_images=24), backbone, folder, context=context,
                                on_chunk=on_chunk or count, **CACHE)
        except Interrupt:
            pass
    return opened


def _cache_worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    context = setup("cpu")
    tmp = Path(tmp)
    from clipml.engine.train import train

    try:
        opened = {"fresh": _build(tmp / "fresh", context)}
        _build(tmp / "resumed", context, stop_after=1 + rank)  # rank 0 commits 1 chunk, rank 1 two
        context.barrier()
        opened["resumed"] = _build(tmp / "resumed", context)
        _build(tmp / "reshard", context, stop_after=2 - rank)  # resumed below by one process
        # Training: 32 train+val and 32 test images, cached in chunks of 16 (eval batches of 1).
        with _recording_encodes() as opened["train"]:
            train(tiny_config(tmp, "name=cached", "data.cache=true", f"data.cache_dir={tmp / 'features'}",
                              "data.options={num_images: 32}", "data.eval_batch_size=1", "data.known_ratio=1",
                              "optim.epochs=1"),
                  resume=False)
        (tmp / f"opened-{rank}.json").write_text(json.dumps(opened))
    finally:
        dist.destroy_process_group()


def _same_cache(path, reference):
    (built,), (expected,) = path.iterdir(), reference.iterdir()
    assert built.name == expected.name  # complete: no ".partial"
    for name in (TOKENS, POOLED, "meta.json"):
        assert (built / name).read_bytes() == (expected / name).read_bytes(), name


def test_two_processes_share_the_cache_extraction_and_resume(tmp_path):
    mp.spawn(_cache_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    opened = [json.loads((tmp_path / f"opened-{rank}.json").read_text()) for rank in range(2)]
    reference = _build(tmp_path / "reference")
    assert reference == _images(0, 0, 8, 16) + _images(1, 0, 8, 16)
    fresh = [[tuple(pair) for pair in ranks["fresh"]] for ranks in opened]
    assert fresh[0] == _images(0, 0, 16) + _images(1, 8)  # chunks 0, 2, 4
    assert fresh[1] == _images(0, 8) + _images(1, 0, 16)  # chunks 1, 3, 5
    _same_cache(tmp_path / "fresh", tmp_path / "reference")

    # Interrupted after chunk 0 (rank 0) and chunks 1, 3 (rank 1): only the rest is encoded.
    resumed = [[tuple(pair) for pair in ranks["resumed"]] for ranks in opened]
    assert resumed[0] == _images(0, 16) + _images(1, 8)  # chunks 2, 4
    assert resumed[1] == _images(1, 16)  # chunk 5
    _same_cache(tmp_path / "resumed", tmp_path / "reference")

    # Interrupted after chunks 0, 2 (rank 0) and 1 (rank 1), then resumed by a single process.
    (partial,) = (tmp_path / "reshard").iterdir()
    assert partial.name.endswith(".partial")
    done = []
    assert _build(tmp_path / "reshard", on_chunk=lambda d, total: done.append((d, total))) == _images(1, 0, 8, 16)
    assert done == [(4, 6), (5, 6), (6, 6)]
    _same_cache(tmp_path / "reshard", tmp_path / "reference")

    # Training under torchrun: each rank encoded one chunk of each cache (train+val, test).
    assert opened[0]["train"] == sorted([[0, i] for i in range(16)] * 2)
    assert opened[1]["train"] == sorted([[0, i] for i in range(16, 32)] * 2)
    folders = [path.name for path in (tmp_path / "features").iterdir()]
    assert len(folders) == 2 and not any(name.endswith(".partial") for name in folders)
    assert (tmp_path / "runs" / "cached" / "summary.json").is_file()


def _error_worker(rank: int, world: int, port: int, tmp: str) -> None:
    """Two user errors that only rank 0 can see; each rank records what it raised."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from clipml.engine.train import train
    from clipml.errors import ClipmlError, DataError

    seen = []
    context = setup("cpu")

    def only_rank_0_fails():
        if context.is_main:
            raise DataError("mask file damaged")
        return "read"

    for attempt in (lambda: context.main_first(only_rank_0_fails),
                    lambda: train(tiny_config(Path(tmp), "name=clash", *SETTINGS), resume=True)):
        try:
            attempt()
            seen.append(None)
        except ClipmlError as error:
            seen.append([type(error).__name__, str(error)])
    context.barrier()  # the group still works after a shared error
    (Path(tmp) / f"errors-{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


def test_a_user_error_on_rank_0_stops_every_rank_with_its_message(tmp_path):
    """Without sharing, rank 1 would wait in its next collective and die with a broken connection."""
    from clipml.config import save_config

    run = tmp_path / "runs" / "clash"
    run.mkdir(parents=True)
    # Another seed (another optim.epochs would continue the run, not clash).
    save_config(tiny_config(tmp_path, "name=clash", *SETTINGS, "seed=7"), run / "config.yaml")
    (run / "summary.json").write_text("{}")  # a trained run of another config: only rank 0 checks
    mp.spawn(_error_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    main, other = (json.loads((tmp_path / f"errors-{rank}.json").read_text()) for rank in range(2))
    assert main[0] == ["DataError", "mask file damaged"]
    assert other[0] == ["DataError", "stopped with rank 0: mask file damaged"]
    assert main[1][0] == other[1][0] == "ConfigError" and "holds a run with another config" in main[1][1]
    assert other[1][1] == f"stopped with rank 0: {main[1][1]}"
