"""Time and memory per part of a training step (`proofkd_profile: true`), logged with the loss parts.

Each part (teacher forward, the loss head, a whole micro-step, the optimizer
step, ...) is a span opened and closed by the trainer or `PartClockCallback`.
For each logging interval the log gets `proofkd/seconds/<part>` (wall
seconds summed over the interval, the device synchronised at both ends) and
`proofkd/peak_gib/<part>` (the largest memory a span of that part allocated
above what was allocated when it began):

* CUDA: `torch.cuda.max_memory_allocated()` during the span.
* CPU: PyTorch's CPU allocator keeps no statistics and `tracemalloc` does not
  see its buffers, so `LiveTensorBytes` counts the storages of every tensor an
  operator returns (a dispatch mode, backward included) and releases them when
  the last tensor on a storage dies (views of, and in-place writes to, memory
  from before the span add nothing). It misses scratch memory that a kernel
  allocates and frees inside itself, so it is a lower bound; its bookkeeping
  costs a few microseconds per operator, small beside real-width matmuls.

Off (the default) a span costs nothing. Written here because neither the
HF Trainer nor Axolotl splits a step into these parts.
"""

from __future__ import annotations

import time
import weakref
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import TrainerCallback

GiB = 2**30


class LiveTensorBytes(TorchDispatchMode):
    """Bytes held by CPU tensor storages created inside the block: live now and at the peak."""

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


class _Span:
    """One open span on `device`: its start time, and what tells its peak memory at the end."""

    def __init__(self, device: torch.device):
        self.device = device
        self.probe = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            self.before = torch.cuda.memory_allocated(device)
        elif device.type == "cpu":
            self.probe = LiveTensorBytes()
            self.probe.__enter__()
        self.start = time.perf_counter()

    def close(self) -> tuple[float, int | None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return time.perf_counter() - self.start, torch.cuda.max_memory_allocated(self.device) - self.before
        seconds = time.perf_counter() - self.start
        if self.probe is not None:
            self.probe.__exit__(None, None, None)
            return seconds, self.probe.peak
        return seconds, None


class PartClock:
    """Seconds and peak extra bytes per named part, between two `drain` calls; inert unless `enabled`."""

    def __init__(self, enabled: bool = False, device: torch.device | str = "cpu"):
        self.enabled = enabled
        self.device = torch.device(device)
        self._open: dict[str, _Span] = {}
        self._seconds: dict[str, float] = defaultdict(float)
        self._peaks: dict[str, int] = {}

    def start(self, part: str) -> None:
        if self.enabled:
            self._open[part] = _Span(self.device)

    def stop(self, part: str) -> None:
        span = self._open.pop(part, None)
        if span is None:
            return
        seconds, peak = span.close()
        self._seconds[part] += seconds
        if peak is not None:
            self._peaks[part] = max(self._peaks.get(part, 0), peak)

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def drain(self, prefix: str) -> dict[str, float]:
        """The interval's figures as log entries (`<prefix>seconds/<part>`, `<prefix>peak_gib/<part>`); reset."""
        logs = {f"{prefix}seconds/{part}": seconds for part, seconds in self._seconds.items()}
        logs.update({f"{prefix}peak_gib/{part}": peak / GiB for part, peak in self._peaks.items()})
        self._seconds.clear()
        self._peaks.clear()
        return logs


class PartClockCallback(TrainerCallback):
    """Times the optimizer step (gradient clipping, just before it, is in no part)."""

    def __init__(self, clock: PartClock):
        self.clock = clock

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.clock.start("optimizer_step")

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.clock.stop("optimizer_step")
