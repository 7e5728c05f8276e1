"""KL(teacher || student): the published Stage-1 recipe's divergence (mode-covering)."""

from __future__ import annotations

import torch

from proofkd.plugin.loss.divergences.base import Divergence, expected_log_ratio


def per_token(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def float64(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return expected_log_ratio(log_q, log_p)


def make(**_params: float) -> Divergence:
    return Divergence("forward_kl", per_token, float64)
