"""The proof weight's schedule over a run's optimizer steps.

The weight is a pure function of the optimizer step and the run's total
steps, both of which a checkpoint stores: a resumed run continues the
schedule exactly where it stopped, and nothing else needs saving.
"""

from __future__ import annotations

import math


def schedule_progress(step: int, total_steps: int) -> float:
    """0 at the first optimizer step, 1 at the last (`step` counts completed steps)."""
    if total_steps <= 1:
        return 0.0
    return min(max(step / (total_steps - 1), 0.0), 1.0)


def proof_weight_at(step: int, total_steps: int, start: float, end: float, kind: str = "linear") -> float:
    """The CE weight of derivation tokens for the optimizer step `step` of `total_steps`.

    linear:   start + (end - start) * progress
    cosine:   end + (start - end) * (1 + cos(pi * progress)) / 2
    constant: start
    """
    progress = schedule_progress(step, total_steps)
    if kind == "linear":
        return start + (end - start) * progress
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "constant":
        return start
    raise ValueError(f"unknown proof weight schedule {kind!r}; use linear, cosine or constant")
