"""The proof-weighted KD loss head, chunked over tokens with gradients taken in the forward pass.

No library computes this head: Liger's fused JSD has no per-token weights and
no T^2 factor, and Axolotl's KD loss reads only a teacher's top-k log-probs.
So this module walks the valid tokens in row chunks; for each chunk it forms
the student's and the teacher's logits (`[chunk, vocab]`, float32), the loss
terms, and the gradient with respect to the student's logits, which it folds
straight into the gradients of the student's hidden states and output
weight. Backward then only scales what forward stored. At no point is a
`[tokens, vocab]` tensor alive.

The gradient with respect to student logit row z_i is, with p = softmax(z_i),
p^T = softmax(z_i / T) over the KL vocabulary, and q^T the teacher's:

    d loss / d z_i = ce_coef * c_i / D_ce * (p - onehot(y_i))
                   + kd_coef * T / D_kd * (p^T - q^T)

(the T^2 of the loss and the 1/T of the softmax derivative leave one T).
"""

from __future__ import annotations

import torch

from proofkd.plugin.loss.stats import FIELDS, LossStats

# Rows per chunk aim at this many logits per [rows, vocab] float32 buffer
# (128 MiB); a chunk holds a handful of such buffers at its peak.
_AUTO_CHUNK_ELEMENTS = 1 << 25


def auto_chunk_size(vocab: int) -> int:
    return max(16, (_AUTO_CHUNK_ELEMENTS // max(vocab, 1)) // 16 * 16)


def _chunk_terms(
    h: torch.Tensor,
    student_weight: torch.Tensor,
    th: torch.Tensor | None,
    teacher_weight: torch.Tensor | None,
    y: torch.Tensor,
    c: torch.Tensor,
    *,
    temperature: float,
    ce_coef: float,
    kd_coef: float,
    d_ce: torch.Tensor,
    d_kd: torch.Tensor,
    kl_vocab: int,
    want_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token CE and KL of one chunk, and d loss / d student logits (or None)."""
    rows = torch.arange(y.shape[0], device=y.device)
    z = (h @ student_weight.T).float()  # h is already in the weight's dtype
    lse = torch.logsumexp(z, dim=-1)
    ce = lse - z[rows, y]

    grad = None
    if want_grad:
        grad = torch.exp(z - lse[:, None])
        grad[rows, y] -= 1.0
        grad *= (ce_coef * c / d_ce)[:, None]

    if kd_coef == 0:
        return ce, torch.zeros_like(ce), grad

    log_q = (th.to(teacher_weight.dtype) @ teacher_weight.T)[:, :kl_vocab].float()
    log_q /= temperature
    log_q -= torch.logsumexp(log_q, dim=-1, keepdim=True)
    log_p = z[:, :kl_vocab] / temperature
    log_p -= torch.logsumexp(log_p, dim=-1, keepdim=True)
    q = log_q.exp()
    # q * (log q - log p), with 0 * log 0 = 0 where the teacher gives no mass.
    kl = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(dim=-1)
    if grad is not None:
        grad[:, :kl_vocab] += (kd_coef * temperature / d_kd) * (log_p.exp_() - q)
    return ce, kl, grad


class _ProofKDHead(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        labels,
        proof_mask,
        proof_weight,
        d_ce,
        d_kd,
        options,
    ):
        (temperature, ce_coef, kd_coef, ignore_index, chunk_size, kl_vocab, want_grad) = options
        device = student_hidden.device
        want_hidden = want_grad and ctx.needs_input_grad[0]
        want_weight = want_grad and ctx.needs_input_grad[1]
        grad_hidden = torch.zeros_like(student_hidden) if want_hidden else None
        grad_weight = torch.zeros(student_weight.shape, dtype=torch.float32, device=device) if want_weight else None

        valid = (labels != ignore_index).nonzero().squeeze(1)
        loss = torch.zeros((), dtype=torch.float32, device=device)
        sums = torch.zeros(len(FIELDS), dtype=torch.float64, device=device)
        for start in range(0, valid.numel(), chunk_size):
            idx = valid[start : start + chunk_size]
            h, y = student_hidden[idx].to(student_weight.dtype), labels[idx]
            proof = proof_mask[idx] != 0
            c = torch.where(proof, proof_weight, 1.0).float()
            ce, kl, grad = _chunk_terms(
                h,
                student_weight,
                None if teacher_hidden is None else teacher_hidden[idx],
                teacher_weight,
                y,
                c,
                temperature=temperature,
                ce_coef=ce_coef,
                kd_coef=kd_coef,
                d_ce=d_ce,
                d_kd=d_kd,
                kl_vocab=kl_vocab,
                want_grad=want_hidden or want_weight,
            )
            loss += ce_coef * (c * ce).sum() / d_ce + kd_coef * temperature**2 * kl.sum() / d_kd
            sums += torch.stack(
                [
                    ce[proof].sum(),
                    proof.sum(),
                    ce[~proof].sum(),
                    (~proof).sum(),
                    kl.sum(),
                    (c * ce).sum(),
                    c.sum(),
                ]
            ).double()
            if grad is not None:
                grad = grad.to(student_weight.dtype)
                if grad_hidden is not None:
                    grad_hidden[idx] = grad @ student_weight
                if grad_weight is not None:
                    grad_weight += (grad.T @ h).float()

        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = student_weight.dtype
        ctx.mark_non_differentiable(sums)
        return loss, sums

    @staticmethod
    def backward(ctx, grad_loss, _grad_sums):
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_loss.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None


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
) -> tuple[torch.Tensor, LossStats]:
    """Proof-weighted CE mixed with T^2-scaled KL to the teacher; see `proofkd.plugin.loss`.

    Inputs are flat and already shifted: row i of `student_hidden` predicts
    `labels[i]`. Returns the scalar loss (differentiable in `student_hidden`
    and `student_weight`) and the detached `LossStats` sums.
    """
    _check_shapes(student_hidden, student_weight, teacher_hidden, teacher_weight, labels, proof_mask, kd_coef)
    device = student_hidden.device
    valid = labels != ignore_index
    vocab = kl_vocab or (
        student_weight.shape[0] if teacher_weight is None else min(student_weight.shape[0], teacher_weight.shape[0])
    )
    if ce_denominator is None:
        proof = (proof_mask != 0) & valid
        ce_denominator = valid.sum() + (float(proof_weight) - 1.0) * proof.sum()
    if kd_denominator is None:
        kd_denominator = valid.sum()
    d_ce = torch.as_tensor(ce_denominator, dtype=torch.float32, device=device).clamp(min=1.0)
    d_kd = torch.as_tensor(kd_denominator, dtype=torch.float32, device=device).clamp(min=1.0)
    w = torch.as_tensor(proof_weight, dtype=torch.float32, device=device)
    want_grad = torch.is_grad_enabled() and (student_hidden.requires_grad or student_weight.requires_grad)
    options = (
        float(temperature),
        float(ce_coef),
        float(kd_coef),
        int(ignore_index),
        int(chunk_size or auto_chunk_size(student_weight.shape[0])),
        int(vocab),
        want_grad,
    )
    loss, sums = _ProofKDHead.apply(
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        labels,
        proof_mask,
        w,
        d_ce,
        d_kd,
        options,
    )
    return loss, LossStats(sums)


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
