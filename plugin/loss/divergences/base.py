"""What a divergence is to the loss head."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

PerToken = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Divergence:
    """D(teacher, student) per token, from log-probabilities at temperature T over the shared vocabulary rows.

    `per_token(log_p, log_q)` takes the student's (`log_p`) and the teacher's
    (`log_q`) log-softmax, `[rows, vocab]` float32, and returns `[rows]`. A
    teacher's zero probabilities arrive as log q = the lowest finite float,
    never -inf, so a term q * log q is 0 and not NaN. It must be pure (no
    in-place updates): the head differentiates it with `torch.func` and may
    compile it.

    `float64(log_p, log_q)` is the same divergence in float64, written as
    the textbook formula on log-probabilities (-inf allowed: 0 log 0 = 0),
    so that logits in the thousands stay exact; nothing in training calls it.

    `finite_on_topk` says whether the divergence stays finite when the teacher
    gives probability 0 outside its top-k (a served teacher): KL(student ||
    teacher) does not.
    """

    name: str
    per_token: PerToken
    float64: PerToken
    finite_on_topk: bool = True


def expected_log_ratio(log_x: torch.Tensor, log_y: torch.Tensor) -> torch.Tensor:
    """KL(x || y) = sum_j x_j (log x_j - log y_j) over the last axis, with 0 log 0 = 0 (for the float64 form)."""
    x = log_x.exp()
    # where() passes gradients through both branches: keep the masked one finite so 0 * inf gives no NaN.
    support = x > 0
    ratio = torch.where(support, log_x, 0.0) - torch.where(support, log_y, 0.0)
    return torch.where(support, x * ratio, 0.0).sum(-1)
