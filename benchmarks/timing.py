"""Shared timing for the benchmarks: medians of functions run interleaved, so that load drifts
on a shared machine hit every measured function alike."""

from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List, Optional

import torch


def interleaved_times(fns: Dict[str, Callable[[], object]], repeats: int, device: str = "cpu",
                      warmup: int = 1, clock: Callable[[], float] = time.perf_counter) -> Dict[str, List[float]]:
    """Seconds of each function in each of `repeats` rounds, after `warmup` calls of each.

    `clock=time.process_time` measures this process's CPU seconds instead of wall seconds: on a
    loaded CPU-only machine with one torch thread, other jobs then do not count.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = clock()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(clock() - start)
    return times


def interleaved_medians(fns: Dict[str, Callable[[], object]], repeats: int, device: str = "cpu",
                        warmup: int = 1, clock: Callable[[], float] = time.perf_counter) -> Dict[str, float]:
    """Median seconds of each function over `repeats` rounds, after `warmup` calls of each."""
    times = interleaved_times(fns, repeats, device, warmup, clock)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def peak_memory(fn: Callable[[], object], device: str) -> Optional[int]:
    """Peak bytes of CUDA memory allocated while `fn` runs (what was already held included); None off CUDA."""
    if not str(device).startswith("cuda"):
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def add_clock_option(parser: argparse.ArgumentParser) -> None:
    """`--clock wall|cpu` for a benchmark that also takes `--device`."""
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="cpu: this process's CPU seconds (CPU device, one torch thread: "
                             "OMP_NUM_THREADS=1), immune to other jobs on a shared machine")


def chosen_clock(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Callable[[], float]:
    """The clock `--clock` names; CPU seconds only where they mean the run's time (one thread, CPU)."""
    if args.clock == "cpu" and (args.device != "cpu" or torch.get_num_threads() != 1):
        parser.error("--clock cpu needs --device cpu and one torch thread (OMP_NUM_THREADS=1)")
    return time.process_time if args.clock == "cpu" else time.perf_counter
