"""The float64 form of the proof-weighted KD loss: the formula, written plainly.

It materialises full-vocabulary logits and lets autograd take the gradient;
the tests hold the chunked fast path (`proofkd.plugin.loss.chunked`) to it.
See `proofkd.plugin.loss` for the formula and its normalisation.
"""

from __future__ import annotations

import torch

from proofkd.plugin.loss.divergences import Divergence, get_divergence
from proofkd.plugin.loss.proof_kd import tail_floor
from proofkd.plugin.loss.stats import ANSWER, DERIVATION, OVERLAP_K, SPANS, LossStats


def proof_kd_loss_float64(
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
    topk_tail: str = "renormalize",
    divergence: Divergence | None = None,
    spans: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """Same contract as `proof_kd_loss`, computed in float64 without chunking; the divergence by its float64 form."""
    valid = labels != ignore_index
    proof = (proof_mask != 0) & valid
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))

    student_logits = student_hidden.double() @ student_weight.double().T
    log_p = torch.log_softmax(student_logits, dim=-1)
    ce = -log_p.gather(1, safe_labels[:, None]).squeeze(1)
    ce = torch.where(valid, ce, torch.zeros_like(ce))

    weights = torch.where(proof, torch.full_like(ce, float(proof_weight)), torch.ones_like(ce))
    weights = torch.where(valid, weights, torch.zeros_like(ce))

    divergence = divergence or get_divergence("forward_kl")
    tail = torch.zeros_like(ce)
    teacher_entropy = overlap = torch.zeros_like(ce)
    if kd_coef != 0 and teacher_topk is not None and topk_tail == "bucket":
        log_p_t, log_q_t, tail = _bucket_distributions(log_p.exp(), teacher_topk, temperature)
        kl = divergence.float64(log_p_t, log_q_t)
        teacher_entropy, overlap = _topk_teacher_figures(log_p.exp(), teacher_topk, tail)
    elif kd_coef != 0:
        if teacher_topk is not None:
            vocab = kl_vocab or student_weight.shape[0]
            ids, logps = teacher_topk
            teacher_logits = torch.full((ids.shape[0], vocab), -torch.inf, dtype=torch.float64)
            teacher_logits.scatter_(1, ids, logps.double())  # the teacher's top-k only; the rest has no mass
            tail = 1.0 - logps.double().exp().sum(-1)
        else:
            vocab = kl_vocab or min(student_weight.shape[0], teacher_weight.shape[0])
            teacher_logits = teacher_hidden.double() @ teacher_weight.double().T
        log_q_t = torch.log_softmax(teacher_logits[:, :vocab] / temperature, dim=-1)
        log_p_t = torch.log_softmax(student_logits[:, :vocab] / temperature, dim=-1)
        kl = divergence.float64(log_p_t, log_q_t)
        teacher_entropy, overlap = _full_teacher_figures(log_p.exp(), teacher_logits[:, :vocab])
    else:
        kl = torch.zeros_like(ce)
    kl = torch.where(valid, kl, torch.zeros_like(kl))
    topk_rows = valid if kd_coef != 0 and teacher_topk is not None else torch.zeros_like(valid)

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
        teacher_tail=tail.clamp(min=0.0)[topk_rows].sum(),
        topk_tokens=topk_rows.sum(),
        teacher_rows=valid.sum() if kd_coef != 0 else 0.0,
        **_per_span(
            torch.where(proof, DERIVATION, ANSWER) if spans is None else spans,
            valid,
            {
                "ce": ce,
                "kl": kl,
                "student_entropy": -(log_p.exp() * log_p).sum(-1),
                "teacher_entropy": teacher_entropy,
                "topk_overlap": overlap,
            },
        ),
    )
    return loss, stats


def _per_span(spans: torch.Tensor, valid: torch.Tensor, per_token: dict[str, torch.Tensor]) -> dict:
    sums = {}
    for index, span in enumerate(SPANS):
        rows = valid & (spans == index)
        sums[f"{span}_tokens"] = rows.sum()
        sums.update({f"{span}_{metric}": values[rows].sum() for metric, values in per_token.items()})
    return sums


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -torch.where(probs > 0, probs * torch.where(probs > 0, probs, 1.0).log(), 0.0).sum(-1)


def _full_teacher_figures(p: torch.Tensor, teacher_logits: torch.Tensor):
    """The teacher's entropy at T = 1 and the student's mass on its most likely tokens, from its logits."""
    q = torch.softmax(teacher_logits, dim=-1)
    top = torch.topk(teacher_logits, min(OVERLAP_K, teacher_logits.shape[1]), dim=-1)
    mass = torch.where(torch.isfinite(top.values), p.gather(1, top.indices), 0.0).sum(-1)
    return _entropy(q), mass


def _topk_teacher_figures(p: torch.Tensor, teacher_topk, tail: torch.Tensor):
    """The same for a top-k teacher whose rest is one outcome: entropy over its k and its tail."""
    ids, logps = teacher_topk
    used = torch.isfinite(logps)
    q = torch.where(used, logps.double().exp(), 0.0)
    top = torch.topk(torch.where(used, logps.double(), -torch.inf), min(OVERLAP_K, ids.shape[1]), dim=-1)
    chosen = torch.isfinite(top.values)
    mass = torch.where(chosen, p.gather(1, ids.gather(1, top.indices)), 0.0).sum(-1)
    return _entropy(torch.cat([q, tail[:, None]], dim=1)), mass


def _bucket_distributions(p: torch.Tensor, teacher_topk, temperature: float):
    """Student and teacher log-probabilities over (top-k tokens, one bucket for the rest), tempered; teacher tail.

    Probabilities at T = 1: the teacher's k, the student's at the same ids,
    each side's rest in the bucket; then each distribution raised to 1 / T and
    normalised. Unused slots (log-prob -inf) have probability 0 on both sides.
    """
    ids, logps = teacher_topk
    used = torch.isfinite(logps)
    q = torch.where(used, logps.double().exp(), torch.zeros_like(logps, dtype=torch.float64))
    s = torch.where(used, p.gather(1, ids), torch.zeros_like(q))
    in_topk = torch.zeros_like(p, dtype=torch.bool)
    for slot in range(ids.shape[1]):
        in_topk[torch.arange(ids.shape[0])[used[:, slot]], ids[used[:, slot], slot]] = True
    q_tail = 1.0 - q.sum(-1, keepdim=True)
    q_tail = torch.where(q_tail > tail_floor(ids.shape[1]), q_tail, 0.0)
    s_tail = torch.where(in_topk, torch.zeros_like(p), p).sum(-1, keepdim=True)

    def tempered(probs):
        # (kept finite inside where(): its gradient runs through both branches)
        positive = probs > 0
        powered = torch.where(positive, torch.where(positive, probs, 1.0) ** (1.0 / temperature), 0.0)
        normalised = powered / powered.sum(-1, keepdim=True)
        return torch.where(positive, torch.where(positive, normalised, 1.0).log(), -torch.inf)

    return tempered(torch.cat([s, s_tail], 1)), tempered(torch.cat([q, q_tail], 1)), q_tail.squeeze(1)
