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
from proofkd.plugin.loss.stats import FIELDS, LossStats

FORWARD_KL = get_divergence("forward_kl")


def stage1_chunk_loss(
    z: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    proof: torch.Tensor,
    c: torch.Tensor,
    ce_factor: torch.Tensor,
    kd_factor: torch.Tensor,
    temperature: torch.Tensor,
    divergence: Divergence,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk's share of the loss, and its sums in the order of `stats.FIELDS`.

    Per row: the label, `proof` (1.0 on derivation tokens) and the CE weight
    `c`; `ce_factor` = ce_coef / D_ce and `kd_factor` = kd_coef * T^2 / D_kd. The
    scalars come as 0-d tensors so that a compiled step serves every value.
    The divergence runs over the teacher logits' columns, the CE over all of z's.
    """
    log_p = torch.log_softmax(z.float(), dim=-1)
    ce = -log_p.gather(1, labels[:, None]).squeeze(1)
    if teacher_logits is None:
        div = torch.zeros_like(ce)
    else:
        kl_vocab = teacher_logits.shape[1]
        # A teacher logit of -inf gives log q = -inf; the lowest finite float keeps q = 0 and q log q = 0, not NaN.
        log_q = torch.log_softmax(teacher_logits.float() / temperature, dim=-1).clamp(
            min=torch.finfo(torch.float32).min
        )
        log_p_t = torch.log_softmax(z[:, :kl_vocab].float() / temperature, dim=-1)
        div = divergence.per_token(log_p_t, log_q)
    weighted = (c * ce).sum()
    loss = ce_factor * weighted + kd_factor * div.sum()
    other = 1.0 - proof
    sums = torch.stack([(ce * proof).sum(), proof.sum(), (ce * other).sum(), other.sum(), div.sum(), weighted, c.sum()])
    return loss, sums.detach()


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
    divergence: Divergence = FORWARD_KL,
) -> tuple[torch.Tensor, LossStats]:
    """Proof-weighted CE mixed with kd_coef * T^2 * divergence to the teacher; see `proofkd.plugin.loss`.

    Inputs are flat and already shifted: row i of `student_hidden` predicts
    `labels[i]`. Returns the scalar loss (differentiable in `student_hidden`
    and `student_weight`) and the detached `LossStats` sums.

    The teacher is `teacher_hidden` with `teacher_weight` (its whole
    distribution), or `teacher_topk` = (ids, log-probs), each `[tokens, k]`,
    as an inference server returns them: the divergence then runs over the
    teacher's top-k, renormalised at T (-inf log-probs mark unused slots).

    `compile` runs each chunk's arithmetic through `torch.compile`; None
    means wherever it compiles (`chunked.compile_by_default`). The first call
    compiles (seconds), a new chunk shape once more; a backend that fails to
    compile falls back to the eager path with a warning.
    """
    valid = labels != ignore_index
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

    def teacher_logits(idx: torch.Tensor) -> torch.Tensor | None:
        if kd_coef == 0:
            return None
        if teacher_topk is not None:
            ids, logps = teacher_topk[0][idx], teacher_topk[1][idx]
            dense = torch.full((idx.numel(), vocab), -torch.inf, dtype=torch.float32, device=device)
            return dense.scatter_(1, ids, logps.float())
        return (teacher_hidden[idx].to(teacher_weight.dtype) @ teacher_weight.T)[:, :vocab]

    loss, sums = chunked_head(
        student_hidden,
        student_weight,
        valid.nonzero().squeeze(1),
        lambda idx: (teacher_logits(idx), labels[idx], proof[idx], c[idx]),
        stage1_chunk_loss,
        constants=(
            ce_coef / d_ce,
            kd_coef * temperature**2 / d_kd,
            torch.tensor(float(temperature), device=device),
            divergence,
        ),
        n_sums=len(FIELDS),
        chunk_size=chunk_size,
        compile=compile,
    )
    return loss, LossStats(sums)


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
