"""Timing and peak-memory helpers shared by the benchmarks in this folder.

Time: warm-up calls, then the median of several timed calls (the device is
synchronised around each one).

Peak memory, as "extra" bytes above what was allocated when the call began:

* CUDA: `torch.cuda.max_memory_allocated()` during the call, minus what was
  allocated at its start. Exact for the caching allocator's live blocks.
* CPU: `proofkd.plugin.profile.LiveTensorBytes` (see there): the bytes of the
  tensor storages operators return, a lower bound that misses a kernel's own
  scratch memory. It is taken in a separate untimed call because the
  bookkeeping slows every operator.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from proofkd.plugin.profile import GiB as GiB  # re-exported for the benchmarks
from proofkd.plugin.profile import LiveTensorBytes as LiveTensorBytes

MiB = 2**20


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def extra_peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated by one call of `fn` above what was allocated before it (see the module doc)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type == "cpu":
        with LiveTensorBytes() as probe:
            fn()
        return probe.peak
    return None


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()
