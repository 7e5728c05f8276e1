"""Timing and peak-memory helpers shared by the benchmarks in this folder.

Time: warm-up calls, then the median of several timed calls (the device is
synchronised around each one).

Peak memory, as "extra" bytes above what was allocated when the call began:

* CUDA: `torch.cuda.max_memory_allocated()` during the call, minus what was
  allocated at its start. Exact for the caching allocator's live blocks.
* CPU: PyTorch's CPU allocator keeps no statistics and `tracemalloc` does not
  see its buffers, so `LiveTensorBytes` counts the storages of every tensor an
  operator returns (through a dispatch mode, backward included) and releases
  them when the last tensor on a storage dies (views of, and in-place writes
  to, memory from before the call add nothing). It misses scratch memory that
  a kernel allocates and frees inside itself (a matmul's packing buffers, a
  reduction's temporaries), so it is a lower bound, and it is taken in a
  separate untimed call because the bookkeeping slows every operator.
"""

from __future__ import annotations

import statistics
import time
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

GiB = 2**30
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


class LiveTensorBytes(TorchDispatchMode):
    """Bytes held by tensor storages created inside the block: live now and at the peak."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage pointer -> [tensors alive on it, bytes]

    def _release(self, key: int) -> None:
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[key]

    def _track(self, t: torch.Tensor, inputs: set[int]) -> None:
        if t.device.type != "cpu" or t.is_sparse:
            return
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key == 0:
            return
        entry = self._refs.get(key)
        if entry is None:
            if key in inputs:  # a view of, or an in-place write to, memory from before the block
                return
            entry = self._refs[key] = [0, storage.nbytes()]
            self.live += entry[1]
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor) and t.device.type == "cpu" and not t.is_sparse
        }
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t, inputs)
        return out


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
