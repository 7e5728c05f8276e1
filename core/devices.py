"""Whether a torch device a user named exists on this machine, said before anything is loaded onto it."""

from __future__ import annotations

import torch


def missing_device_reason(device: str) -> str | None:
    """Why `device` ('cpu', 'cuda', 'cuda:N', ...) cannot be used here, or None if it can (or is not CUDA)."""
    head, _, index = device.partition(":")
    if head != "cuda":
        return None
    if not torch.cuda.is_available():
        return f"{device} needs CUDA, which this machine does not have"
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        return f"this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1}), so no {device}"
    return None
