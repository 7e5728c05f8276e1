"""The Stage-1 head: proof-weighted cross-entropy mixed with a T^2-scaled divergence to the teacher.

The formula and its normalisation are in `proofkd.plugin.loss`. This module
writes the arithmetic of one chunk once (`stage1_chunk_loss`); the chunked
base (`proofkd.plugin.loss.chunked`) runs it eagerly or compiled and takes its
gradient. The teacher comes as hidden states and its output weight (the
whole distribution), or as top-k ids and log-probabilities, as an inference
server returns them: its logits are then those log-probabilities on the k ids
and -inf elsewhere, so the softmax at T renormalises it over its top-k.
"""

from __future__ import annotations

import torch

from proofkd.plugin.loss.chunked import chunked_head
from proofkd.plugin.loss.divergences import Divergence, get_divergence
from proofkd.plugin.loss.stats import ANSWER, CHUNK_FIELDS, DERIVATION, OVERLAP_K, LossStats, span_sums

FORWARD_KL = get_divergence("forward_kl")


TOPK_TAILS = ("renormalize", "bucket")
_LOWEST = torch.finfo(torch.float32).min


def stage1_chunk_loss(
    z: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    topk_ids: torch.Tensor | None,
    topk_logps: torch.Tensor | None,
    labels: torch.Tensor,
    proof: torch.Tensor,
    c: torch.Tensor,
    spans: torch.Tensor,
    ce_factor: torch.Tensor,
    kd_factor: torch.Tensor,
    temperature: torch.Tensor,
    divergence: Divergence,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk's share of the loss, and its sums in the order of `stats.CHUNK_FIELDS`.

    Per row: the label, `proof` (1.0 on derivation tokens), the CE weight `c`
    and the span (`stats.SPANS`); `ce_factor` = ce_coef / D_ce and `kd_factor`
    = kd_coef * T^2 / D_kd. The scalars come as 0-d tensors so that a compiled
    step serves every value. The teacher is `teacher_logits` (the divergence
    runs over their columns), or `topk_ids` with `topk_logps` (the divergence
    runs over the k tokens and a tail bucket), or neither (CE only). The CE
    runs over all of z's columns.
    """
    log_p = torch.log_softmax(z.float(), dim=-1)
    ce = -log_p.gather(1, labels[:, None]).squeeze(1)
    if teacher_logits is not None:
        log_p_t, log_q_t = _tempered_full(z, teacher_logits, temperature)
        div = divergence.per_token(log_p_t, log_q_t)
    elif topk_ids is not None:
        log_p_t, log_q_t = _tempered_buckets(log_p, topk_ids, topk_logps, temperature)
        div = divergence.per_token(log_p_t, log_q_t)
    else:
        div = torch.zeros_like(ce)
    weighted = (c * ce).sum()
    loss = ce_factor * weighted + kd_factor * div.sum()
    other = 1.0 - proof
    has_teacher = teacher_logits is not None or topk_ids is not None
    teacher_entropy, overlap = _teacher_figures(log_p, teacher_logits, topk_ids, topk_logps)
    student_entropy = -(log_p.exp() * log_p).sum(-1)
    per_token = torch.stack([torch.ones_like(ce), ce, div, student_entropy, teacher_entropy, overlap], dim=1)
    sums = torch.cat(
        [
            torch.stack(
                [(ce * proof).sum(), proof.sum(), (ce * other).sum(), other.sum(), div.sum(), weighted, c.sum()]
            ),
            span_sums(spans, per_token),
            ce.new_tensor([float(ce.shape[0]) if has_teacher else 0.0]),
        ]
    )
    return loss, sums.detach()


def _teacher_figures(log_p, teacher_logits, topk_ids, topk_logps) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the teacher's entropy at T = 1, and the student's mass on the teacher's `OVERLAP_K` most likely
    tokens (all it gives, when fewer); zeros without a teacher.

    The entropy is that of the distribution the divergence compares against: a top-k teacher's is renormalised
    over its top-k, or (`topk_ids`, the bucket form) its top-k and its rest as one outcome.
    """
    if teacher_logits is not None:
        log_q = torch.log_softmax(teacher_logits.float(), dim=-1).clamp(min=_LOWEST)
        entropy = -(log_q.exp() * log_q).sum(-1)
        top = torch.topk(teacher_logits.float(), min(OVERLAP_K, teacher_logits.shape[1]), dim=-1)
        ids, used = top.indices, torch.isfinite(top.values)
    elif topk_ids is not None:
        used = torch.isfinite(topk_logps)
        log_q = torch.where(used, topk_logps.float(), _LOWEST)
        log_rest = _teacher_rest(torch.where(used, topk_logps.float(), -torch.inf))
        rest = torch.where(torch.isfinite(log_rest), log_rest.exp() * log_rest, 0.0).squeeze(1)
        entropy = -(log_q.exp() * log_q).sum(-1) - rest
        top = torch.topk(log_q, min(OVERLAP_K, log_q.shape[1]), dim=-1)
        ids, used = topk_ids.gather(1, top.indices), used.gather(1, top.indices)
    else:
        zeros = torch.zeros_like(log_p[:, 0])
        return zeros, zeros
    overlap = torch.where(used, log_p.gather(1, ids).exp(), 0.0).sum(-1)
    return entropy, overlap


def _tempered_full(z, teacher_logits, temperature):
    """Student and teacher log-softmax at T over the teacher logits' columns."""
    kl_vocab = teacher_logits.shape[1]
    # A teacher logit of -inf gives log q = -inf; the lowest finite float keeps q = 0 and q log q = 0, not NaN.
    log_q = torch.log_softmax(teacher_logits.float() / temperature, dim=-1).clamp(min=_LOWEST)
    log_p = torch.log_softmax(z[:, :kl_vocab].float() / temperature, dim=-1)
    return log_p, log_q


def _tempered_buckets(log_p, topk_ids, topk_logps, temperature):
    """Both sides over k + 1 outcomes, the teacher's top-k tokens and one bucket for the rest, at T.

    Each side's k + 1 probabilities are read at T = 1 (as a server gives the
    teacher's) and then tempered as one distribution: softmax(log p / T).
    With k the whole vocabulary the bucket is empty and this is the full KL.
    """
    used = torch.isfinite(topk_logps)
    log_q = torch.where(used, topk_logps.float(), -torch.inf)
    log_s = torch.where(used, log_p.gather(1, topk_ids), -torch.inf)
    # The teacher's rest is all a server tells; the student's is summed over the other tokens, which
    # stays exact when the top-k holds nearly all its mass. The lowest finite float, not -inf, for the
    # top-k tokens keeps logsumexp's gradient finite when nothing is left.
    in_topk = torch.zeros_like(log_p).scatter_add(1, topk_ids, used.float()) > 0
    s_rest = torch.logsumexp(torch.where(in_topk, _LOWEST, log_p), dim=1, keepdim=True)
    q = torch.cat([log_q, _teacher_rest(log_q)], dim=1)
    s = torch.cat([log_s, s_rest], dim=1)
    tempered_q = torch.log_softmax(q / temperature, dim=-1).clamp(min=_LOWEST)
    tempered_s = torch.log_softmax(s / temperature, dim=-1).clamp(min=_LOWEST)
    return tempered_s, tempered_q


def _teacher_rest(log_q: torch.Tensor) -> torch.Tensor:
    """log of the teacher's mass outside its top-k, `[rows, 1]`; -inf when that mass is within rounding of 0."""
    rest = -torch.expm1(torch.logsumexp(log_q.double(), dim=1, keepdim=True))
    return torch.where(rest > tail_floor(log_q.shape[1]), rest.clamp(min=1e-300).log(), -torch.inf).float()


def tail_floor(k: int) -> float:
    """The teacher's tail counts as empty below this: the rounding error of k float32 probabilities summed."""
    return k * torch.finfo(torch.float32).eps


def proof_kd_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    teacher_weight: torch.Tensor | None,
    labels: torch.Tensor,
    proof_mask: torch.Tensor,
    proof_weight: float | torch.Tensor,
    *,
    temperature: float = 2.0,
    ce_coef: float = 0.55,
    kd_coef: float = 0.45,
    ce_denominator: float | torch.Tensor | None = None,
    kd_denominator: float | torch.Tensor | None = None,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    kl_vocab: int | None = None,
    compile: bool | None = None,
    teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None,
    topk_tail: str = "renormalize",
    divergence: Divergence = FORWARD_KL,
    spans: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """Proof-weighted CE mixed with kd_coef * T^2 * divergence to the teacher; see `proofkd.plugin.loss`.

    Inputs are flat and already shifted: row i of `student_hidden` predicts
    `labels[i]`. Returns the scalar loss (differentiable in `student_hidden`
    and `student_weight`) and the detached `LossStats` sums.

    The teacher is `teacher_hidden` with `teacher_weight` (its whole
    distribution), or `teacher_topk` = (ids, log-probs), each `[tokens, k]`,
    as an inference server returns them (log-probs at T = 1; -inf marks an
    unused slot). With `topk_tail="renormalize"` the divergence then runs over
    the vocabulary with the teacher renormalised over its top-k at T; with
    `"bucket"` over k + 1 outcomes, the top-k and one bucket holding each
    side's remaining mass. The stats then carry the teacher's tail mass.

    `spans` gives each row's span (`stats.SPANS`, from `stats.token_spans`) for the per-span sums; None
    counts derivation tokens as the derivation and every other token as the answer.

    `compile` runs each chunk's arithmetic through `torch.compile`; None
    means wherever it compiles (`chunked.compile_by_default`). The first call
    compiles (seconds), a new chunk shape once more; a backend that fails to
    compile falls back to the eager path with a warning.
    """
    valid = labels != ignore_index
    if topk_tail not in TOPK_TAILS:
        raise ValueError(f"topk_tail must be one of {', '.join(TOPK_TAILS)}, got {topk_tail!r}")
    if teacher_topk is not None:
        vocab = kl_vocab or student_weight.shape[0]
        _check_topk(teacher_topk, valid, vocab, student_hidden.shape[0], divergence)
        teacher_hidden = teacher_weight = None
    else:
        _check_shapes(student_hidden, student_weight, teacher_hidden, teacher_weight, labels, proof_mask, kd_coef)
        vocab = kl_vocab or (
            student_weight.shape[0] if teacher_weight is None else min(student_weight.shape[0], teacher_weight.shape[0])
        )
    device = student_hidden.device
    is_proof = proof_mask != 0
    if ce_denominator is None:
        ce_denominator = valid.sum() + (float(proof_weight) - 1.0) * (is_proof & valid).sum()
    if kd_denominator is None:
        kd_denominator = valid.sum()
    d_ce = torch.as_tensor(ce_denominator, dtype=torch.float32, device=device).clamp(min=1.0)
    d_kd = torch.as_tensor(kd_denominator, dtype=torch.float32, device=device).clamp(min=1.0)
    w = torch.as_tensor(proof_weight, dtype=torch.float32, device=device)
    proof = is_proof.float()
    c = torch.where(is_proof, w, torch.ones_like(w))
    if spans is None:
        spans = torch.where(is_proof, DERIVATION, ANSWER)

    def teacher_inputs(idx: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """(dense teacher logits, top-k ids, top-k log-probs) of a chunk; the unused ones None."""
        if kd_coef == 0:
            return None, None, None
        if teacher_topk is None:
            return (teacher_hidden[idx].to(teacher_weight.dtype) @ teacher_weight.T)[:, :vocab], None, None
        ids, logps = teacher_topk[0][idx], teacher_topk[1][idx]
        if topk_tail == "bucket":
            return None, ids, logps
        dense = torch.full((idx.numel(), vocab), -torch.inf, dtype=torch.float32, device=device)
        return dense.scatter_(1, ids, logps.float()), None, None

    rows = valid.nonzero().squeeze(1)
    loss, sums = chunked_head(
        student_hidden,
        student_weight,
        rows,
        lambda idx: (*teacher_inputs(idx), labels[idx], proof[idx], c[idx], spans[idx]),
        stage1_chunk_loss,
        constants=(
            ce_coef / d_ce,
            kd_coef * temperature**2 / d_kd,
            torch.tensor(float(temperature), device=device),
            divergence,
        ),
        n_sums=len(CHUNK_FIELDS),
        chunk_size=chunk_size,
        compile=compile,
    )
    return loss, LossStats(torch.cat([sums, _tail_sums(teacher_topk if kd_coef else None, rows)]))


def _tail_sums(teacher_topk, rows: torch.Tensor) -> torch.Tensor:
    """(sum of the teacher's mass outside its top-k at T = 1, tokens with a top-k teacher) over `rows`."""
    if teacher_topk is None:
        return torch.zeros(2, dtype=torch.float64, device=rows.device)
    mass = teacher_topk[1][rows].double().exp().sum(-1)
    return torch.stack([(1.0 - mass).clamp(min=0.0).sum(), mass.new_tensor(float(rows.numel()))])


def _check_topk(teacher_topk, valid: torch.Tensor, vocab: int, n: int, divergence: Divergence) -> None:
    ids, logps = teacher_topk
    if not divergence.finite_on_topk:
        raise ValueError(
            f"{divergence.name} is infinite on a top-k teacher (it gives 0 probability outside its top-k); "
            "use forward_kl or jsd with a teacher server"
        )
    if ids.shape != logps.shape or ids.dim() != 2 or ids.shape[0] != n:
        raise ValueError(
            f"teacher_topk must be two [tokens, k] tensors for {n} tokens, got {tuple(ids.shape)} and "
            f"{tuple(logps.shape)}"
        )
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"teacher_topk ids must lie in [0, {vocab}), the vocabulary rows both models have")
    empty = valid & ~torch.isfinite(logps).any(dim=1)
    if bool(empty.any()):
        row = int(empty.nonzero()[0, 0])
        raise ValueError(
            f"teacher_topk gives no finite log-probability for trained token {row} "
            f"({int(empty.sum())} such tokens): the teacher scored fewer positions than the batch trains"
        )


def _check_shapes(student_hidden, student_weight, teacher_hidden, teacher_weight, labels, proof_mask, kd_coef):
    if student_hidden.dim() != 2 or student_weight.dim() != 2:
        raise ValueError("student_hidden must be [tokens, hidden] and student_weight [vocab, hidden]")
    if student_hidden.shape[1] != student_weight.shape[1]:
        raise ValueError(
            f"student hidden size {student_hidden.shape[1]} does not match its output weight {student_weight.shape[1]}"
        )
    n = student_hidden.shape[0]
    if labels.shape != (n,) or proof_mask.shape != (n,):
        raise ValueError(f"labels {tuple(labels.shape)} and proof_mask {tuple(proof_mask.shape)} must both be ({n},)")
    if kd_coef != 0:
        if teacher_hidden is None or teacher_weight is None:
            raise ValueError("kd_coef is not 0, so teacher_hidden and teacher_weight are required")
        if teacher_hidden.shape[0] != n or teacher_hidden.shape[1] != teacher_weight.shape[1]:
            raise ValueError(
                f"teacher hidden {tuple(teacher_hidden.shape)} does not fit {n} tokens and "
                f"teacher weight {tuple(teacher_weight.shape)}"
            )
