"""Data-parallel training with 2 CPU processes (gloo) against the same run in 1 process."""

import json
import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipml.engine.distributed import DistContext, global_batches, shard
from test_engine import tiny_config

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
