"""KL(student || teacher): mode-seeking, the divergence on-policy distillation estimates per token.

Infinite wherever the teacher gives probability 0 to a token the student
does not, so it is not offered with a top-k teacher.
"""

from __future__ import annotations

import torch

from proofkd.plugin.loss.divergences.base import Divergence, expected_log_ratio


def per_token(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def float64(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return expected_log_ratio(log_p, log_q)


def make(**_params: float) -> Divergence:
    return Divergence("reverse_kl", per_token, float64, finite_on_topk=False)
