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

from proofkd.core.logs import get_logger
from proofkd.plugin.loss.stats import FIELDS, LossStats

LOG = get_logger(__name__)

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
    compiled: bool,
    topk: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-token CE and KL of one chunk, and d loss / d student logits in the weight's dtype (or None).

    The teacher comes as hidden states and its output weight, or as `topk`
    (ids and log-probabilities `[rows, k]`): then its logits are those
    log-probabilities on the k ids and -inf elsewhere, so that the softmax at
    T renormalises the teacher over its top-k.
    """
    z = h @ student_weight.T  # h is already in the weight's dtype
    if kd_coef == 0:
        t = None
    elif topk is not None:
        ids, logps = topk
        t = torch.full((ids.shape[0], kl_vocab), -torch.inf, dtype=torch.float32, device=ids.device)
        t.scatter_(1, ids, logps.float())
    else:
        t = (th.to(teacher_weight.dtype) @ teacher_weight.T)[:, :kl_vocab]
    ce_scale = ce_coef * c / d_ce
    kd_scale = kd_coef * temperature / d_kd
    args = (z, t, y, ce_scale, kd_scale, temperature, want_grad, student_weight.dtype)
    if compiled and _compiled_terms() is not None:
        try:
            return _compiled_terms()(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # a backend that cannot build it: stay correct, eagerly
            _give_up_compiling(error)
    return _logit_terms(*args)


def _logit_terms(
    z: torch.Tensor,
    t: torch.Tensor | None,
    y: torch.Tensor,
    ce_scale: torch.Tensor,
    kd_scale: torch.Tensor,
    temperature: float,
    want_grad: bool,
    grad_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The loss terms from one chunk's logits, eagerly; consumes `z` and `t` (they are scaled in place).

    Every `[rows, vocab]` pass costs about as much as the matmuls at small
    hidden sizes, so the passes are counted: one fused `log_softmax` per
    distribution (not logsumexp and a subtraction), buffers reused in place
    once their values are spent, and the KL's row sums as batched dot products.
    """
    rows = torch.arange(y.shape[0], device=y.device)
    z = z.float()
    log_p = torch.log_softmax(z, dim=-1)
    ce = -log_p[rows, y]

    grad = None
    if want_grad:
        grad = log_p.exp_()  # softmax(z), in the buffer log_p no longer needs
        grad[rows, y] -= 1.0
        grad *= ce_scale[:, None]
    del log_p

    if t is None:
        return ce, torch.zeros_like(ce), None if grad is None else grad.to(grad_dtype)

    kl_vocab = t.shape[1]
    t = t.float() if t.dtype != torch.float32 else t
    log_q = torch.log_softmax(t.div_(temperature), dim=-1)
    del t
    # z is spent except for its first kl_vocab columns: scale them in place.
    log_p_t = torch.log_softmax(z[:, :kl_vocab].div_(temperature), dim=-1)
    del z
    # A teacher logit of -inf gives q = 0 and log q = -inf; clamping log q to the
    # lowest finite float keeps q = 0 and makes q * (log q - log p) exactly 0, not NaN.
    log_q.clamp_(min=torch.finfo(log_q.dtype).min)
    q = torch.exp(log_q)
    kl = torch.einsum("ij,ij->i", q, log_q.sub_(log_p_t))
    del log_q
    if grad is not None:
        p_t = log_p_t.exp_().sub_(q)  # softmax(z / T) - q, in place
        grad[:, :kl_vocab].addcmul_(p_t, kd_scale)
        grad = grad.to(grad_dtype)
    return ce, kl, grad


def _logit_terms_pure(
    z: torch.Tensor,
    t: torch.Tensor | None,
    y: torch.Tensor,
    ce_scale: torch.Tensor,
    kd_scale: torch.Tensor,
    temperature: float,
    want_grad: bool,
    grad_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """`_logit_terms` written without in-place updates, for `torch.compile` to fuse into a few passes."""
    rows = torch.arange(y.shape[0], device=y.device)
    z = z.float()
    log_p = torch.log_softmax(z, dim=-1)
    ce = -log_p[rows, y]
    is_label = torch.arange(z.shape[1], device=z.device)[None, :] == y[:, None]
    grad = (log_p.exp() - is_label.float()) * ce_scale[:, None] if want_grad else None
    if t is None:
        return ce, torch.zeros_like(ce), None if grad is None else grad.to(grad_dtype)
    kl_vocab = t.shape[1]
    log_q = torch.log_softmax(t.float() / temperature, dim=-1).clamp(min=torch.finfo(torch.float32).min)
    log_p_t = torch.log_softmax(z[:, :kl_vocab] / temperature, dim=-1)
    q = log_q.exp()
    kl = (q * (log_q - log_p_t)).sum(dim=-1)
    if grad is not None:
        kd_grad = kd_scale * (log_p_t.exp() - q)
        if kl_vocab < z.shape[1]:
            kd_grad = torch.nn.functional.pad(kd_grad, (0, z.shape[1] - kl_vocab))
        grad = (grad + kd_grad).to(grad_dtype)
    return ce, kl, grad


_COMPILED: dict[str, object] = {}


def _compiled_terms():
    """`_logit_terms_pure` under `torch.compile`, built on first use; None once compiling has failed."""
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(_logit_terms_pure, dynamic=None)
    return _COMPILED["fn"]


def _give_up_compiling(error: Exception) -> None:
    LOG.warning("proof_kd_loss: torch.compile failed (%s: %s); using the eager loss head", type(error).__name__, error)
    _COMPILED["fn"] = None


def compile_by_default(device: torch.device) -> bool:
    """Off by default on every device: the compiled path is opt-in (`compile=True`, or the plugin's
    `proofkd_compile_loss_head`) until it has been measured against the eager one where it runs."""
    return False


class _ProofKDHead(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        teacher_topk_ids,
        teacher_topk_logps,
        labels,
        proof_mask,
        proof_weight,
        d_ce,
        d_kd,
        options,
    ):
        (temperature, ce_coef, kd_coef, ignore_index, chunk_size, kl_vocab, want_grad, compiled) = options
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
                compiled=compiled,
                topk=None if teacher_topk_ids is None else (teacher_topk_ids[idx], teacher_topk_logps[idx]),
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
                if grad_hidden is not None:
                    grad_hidden[idx] = grad @ student_weight
                if grad_weight is not None:
                    _accumulate(grad_weight, grad.T, h)

        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = student_weight.dtype
        ctx.mark_non_differentiable(sums)
        return loss, sums

    @staticmethod
    def backward(ctx, grad_loss, _grad_sums):
        # Scaled in place: a second copy of the float32 weight gradient would be
        # the largest buffer of the whole head. (Calling backward through the
        # same graph twice then fails on the version check instead of scaling twice.)
        grad_hidden, grad_weight = ctx.saved_tensors
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(grad_loss.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None, None, None


def _accumulate(grad_weight: torch.Tensor, grad_t: torch.Tensor, h: torch.Tensor) -> None:
    """grad_weight (float32) += grad_t @ h, without a `[vocab, hidden]` temporary where the device allows."""
    if grad_t.dtype == grad_weight.dtype:
        grad_weight.addmm_(grad_t, h)
    elif _fp32_accumulating_addmm(grad_weight.device, grad_t.dtype):
        torch.addmm(grad_weight, grad_t, h, torch.float32, out=grad_weight)
    else:
        grad_weight += (grad_t @ h).float()


_ADDMM_PROBED: dict[tuple[torch.device, torch.dtype], bool] = {}


def _fp32_accumulating_addmm(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `addmm` on `device` multiplies `dtype` (bfloat16, float16) into a float32 output in place, correctly.

    CUDA builds have it (`out_dtype`); others raise. Probed once per device on
    a small case and checked against the float32 product, so a build that
    lacks it, or gets it wrong, falls back to the plain path.
    """
    key = (device, dtype)
    if key not in _ADDMM_PROBED:
        ok = False
        if device.type == "cuda":
            try:
                g = torch.Generator(device="cpu").manual_seed(0)
                a = torch.randn(96, 40, generator=g).to(device, dtype)
                b = torch.randn(40, 72, generator=g).to(device, dtype)
                acc = torch.randn(96, 72, generator=g).to(device)
                want = acc + a.float() @ b.float()
                torch.addmm(acc, a, b, torch.float32, out=acc)
                ok = bool(torch.allclose(acc, want, rtol=1e-4, atol=1e-4))
            except (RuntimeError, TypeError, NotImplementedError):
                ok = False
        _ADDMM_PROBED[key] = ok
    return _ADDMM_PROBED[key]


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
) -> tuple[torch.Tensor, LossStats]:
    """Proof-weighted CE mixed with T^2-scaled KL to the teacher; see `proofkd.plugin.loss`.

    Inputs are flat and already shifted: row i of `student_hidden` predicts
    `labels[i]`. Returns the scalar loss (differentiable in `student_hidden`
    and `student_weight`) and the detached `LossStats` sums.

    The teacher is `teacher_hidden` with `teacher_weight` (its whole
    distribution), or `teacher_topk` = (ids, log-probs), each `[tokens, k]`,
    as an inference server returns them: the KL then runs over the teacher's
    top-k, renormalised at T (-inf log-probs mark unused slots).

    `compile` runs each chunk's arithmetic on its logits through
    `torch.compile` (one fused kernel per pass instead of one per operation);
    None means off (see `compile_by_default`). The first call compiles
    (seconds), a new chunk shape once more; a backend that fails to compile
    falls back to the eager path with a warning.
    """
    valid = labels != ignore_index
    if teacher_topk is not None:
        vocab = kl_vocab or student_weight.shape[0]
        _check_topk(teacher_topk, valid, vocab, student_hidden.shape[0])
        teacher_hidden = teacher_weight = None
    else:
        _check_shapes(student_hidden, student_weight, teacher_hidden, teacher_weight, labels, proof_mask, kd_coef)
        vocab = kl_vocab or (
            student_weight.shape[0] if teacher_weight is None else min(student_weight.shape[0], teacher_weight.shape[0])
        )
    device = student_hidden.device
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
        compile_by_default(device) if compile is None else bool(compile),
    )
    loss, sums = _ProofKDHead.apply(
        student_hidden,
        student_weight,
        teacher_hidden,
        teacher_weight,
        None if teacher_topk is None else teacher_topk[0],
        None if teacher_topk is None else teacher_topk[1],
        labels,
        proof_mask,
        w,
        d_ce,
        d_kd,
        options,
    )
    return loss, LossStats(sums)


def _check_topk(teacher_topk, valid: torch.Tensor, vocab: int, n: int) -> None:
    ids, logps = teacher_topk
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
