"""The float64 form of OPD's estimators and loss, written token by token from the definitions.

The tests hold `proofkd.plugin.opd.losses` to these on fresh random inputs,
values and gradients both.
"""

from __future__ import annotations

import math

import torch


def kl_estimate_float64(s: float, q: float, estimator: str, clamp: float) -> float:
    d = s - q
    if estimator == "k1":
        value = d
    elif estimator == "k2":
        value = d * d / 2
    else:
        x = max(-20.0, min(20.0, q - s))
        value = math.exp(x) - x - 1
    return max(-clamp, min(clamp, value))


def token_loss_float64(logp, old_logp: float, advantage: float, eps_low, eps_high, dual_clip):
    """One token's clipped surrogate; `logp` is a float64 tensor so the gradient can be taken."""
    log_ratio = (logp - old_logp).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)
    surrogate = torch.maximum(-advantage * ratio, -advantage * clipped)
    if dual_clip is not None and advantage < 0:
        surrogate = torch.minimum(surrogate, torch.tensor(-advantage * dual_clip, dtype=torch.float64))
    return surrogate


def opd_loss_float64(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    teacher_logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    estimator: str,
    clamp: float,
    coef: float,
    task_advantages: torch.Tensor | None,
    task_coef: float,
    eps_low: float,
    eps_high: float,
    dual_clip: float | None,
    normalizer: float,
    advantage_from: str = "current",
    advantage_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The same loss as `opd_loss`, summed token by token in float64."""
    total = torch.zeros((), dtype=torch.float64)
    rows, cols = logps.shape
    for b in range(rows):
        for t in range(cols):
            if not mask[b, t]:
                continue
            s = logps[b, t].double()
            s_value = float(s.detach())
            old = float(old_logps[b, t])
            judged = s_value if advantage_from == "current" else old
            advantage = -kl_estimate_float64(judged, float(teacher_logps[b, t]), estimator, clamp)
            if advantage_scale is not None:
                advantage *= float(advantage_scale[b, t])
            total = total + coef * token_loss_float64(s, old, advantage, eps_low, eps_high, dual_clip)
            if task_coef and task_advantages is not None:
                task = float(task_advantages[b])
                total = total + task_coef * token_loss_float64(s, old, task, eps_low, eps_high, dual_clip)
    return total / normalizer
