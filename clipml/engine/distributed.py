"""Data-parallel training under `torchrun`: process group, batch sharding, gathering results.

Every rank sees the same global batches in the same order (the single-process order) and keeps
every `world`-th image of each; gradients are averaged by DistributedDataParallel; evaluation
gathers all ranks' predictions so every rank computes the same metrics. Rank 0 alone writes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from clipml.errors import ClipmlError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0, then on the others: for work that writes shared files (masks).
        A user error on rank 0 stops every rank with it (see `on_main`). `fn` runs once per process."""
        result = self.on_main(fn)
        return result if self.is_main else fn()

    def on_main(self, fn: Callable[[], T]) -> Optional[T]:
        """Run `fn` on rank 0 only (None elsewhere) and wait for it on every rank. A ClipmlError it
        raises is raised on every rank, so the others stop with the same message instead of a
        broken-connection traceback from their next collective."""
        if not self.active:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except ClipmlError as raised:
                error = raised
        shared = [error]
        dist.broadcast_object_list(shared, src=0, device=torch.device("cpu"))
        if shared[0] is not None:
            if self.is_main:
                raise shared[0]
            raise type(shared[0])(f"stopped with rank 0: {shared[0]}")
        return result


def setup(device: str) -> DistContext:
    """Join the process group that `torchrun` describes in the environment (nothing otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device)
    if not dist.is_initialized():
        # On GPUs, NCCL for tensors on the device and gloo for the small CPU tensors of all_reduce
        # (NCCL alone refuses CPU tensors).
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


def shard(index: np.ndarray, context: Optional[DistContext]) -> np.ndarray:
    """This rank's part of a global batch."""
    if context is None or not context.active:
        return index
    return index[context.rank::context.world]


def epoch_order(count: int, shuffle: bool, seed: Optional[int]) -> np.ndarray:
    """The image order of one pass: for a seed, exactly the order a shuffling DataLoader with a
    generator seeded `seed` uses (it draws its workers' base seed from the generator first)."""
    if not shuffle:
        return np.arange(count)
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ())))
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(count, generator=generator).numpy()


def global_batches(count: int, batch_size: int, shuffle: bool, seed: Optional[int]) -> List[np.ndarray]:
    order = epoch_order(count, shuffle, seed)
    return [order[start:start + batch_size] for start in range(0, count, batch_size)]


def all_reduce(context: DistContext, value: float, average: bool) -> float:
    """Sum (or average) a number over ranks."""
    if not context.active:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor) / (context.world if average else 1)


def gather_rows(context: DistContext, parts: Sequence[np.ndarray]) -> Tuple[np.ndarray, ...]:
    """Concatenate each array over all ranks (in rank order)."""
    if not context.active:
        return tuple(parts)
    gathered: list = [None] * context.world
    dist.all_gather_object(gathered, [np.asarray(p) for p in parts])
    return tuple(np.concatenate([rank_parts[i] for rank_parts in gathered]) for i in range(len(parts)))
