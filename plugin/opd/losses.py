"""On-policy distillation's per-token estimators and its clipped policy-gradient loss.

The student samples y; at each sampled token t, with s = log p_student(y_t)
and q = log p_teacher(y_t), the reverse KL KL(student || teacher) is
estimated by

    k1 = s - q
    k2 = (s - q)^2 / 2
    k3 = exp(q - s) - (q - s) - 1        (q - s clamped to [-20, 20] first)

each clamped to [-c, c] (c = 10). The advantage of token t is A_t = -k(t),
with no discount over the sequence: a token is judged by what the teacher
thinks of it alone. s is the current student's (default) or the rollout's.
Span-aware OPD multiplies A_t by the proof weight w on the derivation tokens
of the sample (`proofkd.plugin.opd.spans`), and by 1 elsewhere.

The update is the PPO clipped objective with ratio r = exp(log pi - log pi_old):

    l_t = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))       for A >= 0
    l_t = min(max(-A r, -A clip(r, ...)), -A c_dual)             for A <  0 (dual clip)

summed over the completion tokens (prompt and padding masked out) and divided
by the number of completion tokens in the optimizer step: a token mean over
the step, however it is split into micro-batches. With a task reward, the task
advantage (one per sequence, group-normalised by GRPO) drives a second clipped
loss of the same form, and the two are added with their coefficients.
"""

from __future__ import annotations

import torch

ESTIMATORS = ("k1", "k2", "k3")
ADVANTAGE_SOURCES = ("current", "rollout")
LOG_RATIO_LIMIT = 20.0


def kl_estimate(student_logps: torch.Tensor, teacher_logps: torch.Tensor, estimator: str, clamp: float) -> torch.Tensor:
    """Per-token reverse-KL estimate of `estimator` (k1, k2 or k3), clamped to [-clamp, clamp]."""
    diff = student_logps - teacher_logps
    if estimator == "k1":
        value = diff
    elif estimator == "k2":
        value = 0.5 * diff.square()
    elif estimator == "k3":
        neg = (-diff).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
        value = torch.expm1(neg) - neg
    else:
        raise ValueError(f"unknown estimator {estimator!r}; use one of {', '.join(ESTIMATORS)}")
    return value.clamp(-clamp, clamp)


def clipped_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = 3.0,
    normalizer: float | torch.Tensor = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate summed over `mask` and divided by `normalizer`; and clip statistics.

    `advantages` is `[B, T]` or `[B]` (broadcast over tokens). Returns the loss
    and detached sums: tokens clipped low, high, and by the dual clip.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    log_ratio = (logps - old_logps).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = log_ratio.exp()
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    per_token = torch.maximum(-advantages * ratio, -advantages * clipped)
    dual = torch.zeros_like(per_token, dtype=torch.bool)
    if dual_clip is not None:
        bound = -advantages * dual_clip
        dual = (advantages < 0) & (per_token > bound)
        per_token = torch.where(advantages < 0, torch.minimum(per_token, bound), per_token)
    weights = mask.to(per_token.dtype)
    loss = (per_token * weights).sum() / normalizer
    with torch.no_grad():
        on = mask.bool()
        stats = {
            "clipped_low": ((ratio < 1 - eps_low) & (advantages < 0) & on).sum(),
            "clipped_high": ((ratio > 1 + eps_high) & (advantages > 0) & on).sum(),
            "clipped_dual": (dual & on).sum(),
            "tokens": on.sum(),
        }
    return loss, stats


def opd_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    teacher_logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    estimator: str = "k1",
    clamp: float = 10.0,
    coef: float = 1.0,
    task_advantages: torch.Tensor | None = None,
    task_coef: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = 3.0,
    normalizer: float | torch.Tensor = 1.0,
    advantage_from: str = "current",
    advantage_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """coef * clipped loss with A = -k(student, teacher) (+ task_coef * clipped loss on the task advantage).

    `advantage_scale` (`[B, T]`) multiplies the distillation advantage token by token: span-aware OPD gives
    the derivation tokens of each sample the proof weight and every other token 1.

    `advantage_from` picks the student log-probs of the estimate: "current"
    (the policy being updated, detached) or "rollout" (`old_logps`, fixed
    when the rollout was sampled, as a PPO advantage is). The two agree on
    the first optimizer step of each rollout. Either way the advantage is a
    constant of the surrogate, whose gradient flows through the ratio.
    """
    if advantage_from not in ADVANTAGE_SOURCES:
        raise ValueError(f"advantage_from must be one of {', '.join(ADVANTAGE_SOURCES)}, got {advantage_from!r}")
    student = logps.detach() if advantage_from == "current" else old_logps
    advantages = -kl_estimate(student, teacher_logps, estimator, clamp)
    if advantage_scale is not None:
        advantages = advantages * advantage_scale
    kwargs = dict(eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip, normalizer=normalizer)
    loss, stats = clipped_policy_loss(logps, old_logps, advantages, mask, **kwargs)
    loss = coef * loss
    if task_coef and task_advantages is not None:
        task_loss, _ = clipped_policy_loss(logps, old_logps, task_advantages, mask, **kwargs)
        loss = loss + task_coef * task_loss
    return loss, stats
