"""Float64 reference of the proof-weighted KD loss: the formula, written plainly.

It materialises full-vocabulary logits and lets autograd take the gradient;
the tests hold the chunked fast path (`proofkd.plugin.loss.chunked`) to it.
See `proofkd.plugin.loss` for the formula and its normalisation.
"""

from __future__ import annotations

import torch

from proofkd.plugin.loss.divergences import Divergence, get_divergence
from proofkd.plugin.loss.stats import LossStats


def proof_kd_loss_reference(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    teacher_weight: torch.Tensor | None,
    labels: torch.Tensor,
    proof_mask: torch.Tensor,
    proof_weight: float,
    *,
    temperature: float = 2.0,
    ce_coef: float = 0.55,
    kd_coef: float = 0.45,
    ce_denominator: float | torch.Tensor | None = None,
    kd_denominator: float | torch.Tensor | None = None,
    ignore_index: int = -100,
    kl_vocab: int | None = None,
    teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None,
    divergence: Divergence | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """Same contract as `proof_kd_loss`, computed in float64 without chunking; the divergence by its reference."""
    valid = labels != ignore_index
    proof = (proof_mask != 0) & valid
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))

    student_logits = student_hidden.double() @ student_weight.double().T
    log_p = torch.log_softmax(student_logits, dim=-1)
    ce = -log_p.gather(1, safe_labels[:, None]).squeeze(1)
    ce = torch.where(valid, ce, torch.zeros_like(ce))

    weights = torch.where(proof, torch.full_like(ce, float(proof_weight)), torch.ones_like(ce))
    weights = torch.where(valid, weights, torch.zeros_like(ce))

    if kd_coef != 0:
        if teacher_topk is not None:
            vocab = kl_vocab or student_weight.shape[0]
            ids, logps = teacher_topk
            teacher_logits = torch.full((ids.shape[0], vocab), -torch.inf, dtype=torch.float64)
            teacher_logits.scatter_(1, ids, logps.double())  # the teacher's top-k only; the rest has no mass
        else:
            vocab = kl_vocab or min(student_weight.shape[0], teacher_weight.shape[0])
            teacher_logits = teacher_hidden.double() @ teacher_weight.double().T
        log_q_t = torch.log_softmax(teacher_logits[:, :vocab] / temperature, dim=-1)
        log_p_t = torch.log_softmax(student_logits[:, :vocab] / temperature, dim=-1)
        kl = (divergence or get_divergence("forward_kl")).reference(log_p_t, log_q_t)
        kl = torch.where(valid, kl, torch.zeros_like(kl))
    else:
        kl = torch.zeros_like(ce)

    d_ce = weights.sum() if ce_denominator is None else torch.as_tensor(ce_denominator, dtype=torch.float64)
    d_kd = valid.sum().double() if kd_denominator is None else torch.as_tensor(kd_denominator, dtype=torch.float64)
    d_ce, d_kd = d_ce.clamp(min=1.0), d_kd.clamp(min=1.0)

    loss = ce_coef * (weights * ce).sum() / d_ce + kd_coef * temperature**2 * kl.sum() / d_kd
    stats = LossStats.from_sums(
        ce_proof=ce[proof].sum(),
        proof_tokens=proof.sum(),
        ce_other=ce[valid & ~proof].sum(),
        other_tokens=(valid & ~proof).sum(),
        kl=kl.sum(),
        ce_weighted=(weights * ce).sum(),
        ce_weight=weights.sum(),
    )
    return loss, stats
