"""Generalised Jensen-Shannon divergence with weight beta, as TRL's GKD trainer defines it.

    M   = beta * q + (1 - beta) * p          (q the teacher, p the student)
    JSD = beta * KL(q || M) + (1 - beta) * KL(p || M)

It is finite on a top-k teacher (M > 0 wherever p > 0) and bounded by
log 2 at beta = 0.5. As in TRL, beta = 0 means KL(teacher || student) and
beta = 1 KL(student || teacher) (the formula itself vanishes at both ends).
"""

from __future__ import annotations

import math
from functools import partial

import torch

from proofkd.plugin.loss.divergences import forward_kl, reverse_kl
from proofkd.plugin.loss.divergences.base import Divergence, expected_log_ratio


def per_token(log_p: torch.Tensor, log_q: torch.Tensor, *, beta: float) -> torch.Tensor:
    log_m = torch.logaddexp(log_q + math.log(beta), log_p + math.log1p(-beta))
    to_teacher = (log_q.exp() * (log_q - log_m)).sum(-1)
    to_student = (log_p.exp() * (log_p - log_m)).sum(-1)
    return beta * to_teacher + (1.0 - beta) * to_student


def float64(log_p: torch.Tensor, log_q: torch.Tensor, *, beta: float) -> torch.Tensor:
    log_m = (beta * log_q.exp() + (1.0 - beta) * log_p.exp()).log()
    return beta * expected_log_ratio(log_q, log_m) + (1.0 - beta) * expected_log_ratio(log_p, log_m)


def make(*, beta: float = 0.5, **_params: float) -> Divergence:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must lie in [0, 1], got {beta}")
    if beta == 0.0:
        return forward_kl.make()
    if beta == 1.0:
        return reverse_kl.make()
    return Divergence(f"jsd(beta={beta:g})", partial(per_token, beta=beta), partial(float64, beta=beta))
