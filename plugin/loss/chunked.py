"""The chunked base of every loss head: logits formed a row chunk at a time, gradients taken in the forward.

A loss head here is a function of the student's final hidden states H
`[tokens, hidden]` and output weight W `[vocab, hidden]` whose value is a sum
over tokens of something computed from that token's logits z = H W^T. At
150k vocabulary rows the `[tokens, vocab]` logits (and their gradient) would
dwarf the model, so `chunked_head` walks the rows in chunks: per chunk it
forms z, asks `torch.func.grad_and_value` for the chunk's loss and d loss / d z,
and folds that gradient straight into the gradients of H and W. Backward then
only scales what forward stored. At no point is a `[tokens, vocab]` tensor
alive.

A head supplies one `ChunkLoss`: a pure function of the chunk's logits and
whatever per-row inputs it prepares (labels, teacher logits, scales), which
returns the chunk's loss and a vector of detached sums for logging. The same
function runs eagerly and, by default, under `torch.compile` (one fused
kernel per pass instead of one per operation); a backend that cannot compile
it falls back to eager with a warning.

No library gives this shape with per-token weights and a teacher of its own
vocabulary: Liger's chunked losses have neither, and Axolotl's KD reads only
top-k log-probabilities. The layout follows Liger's chunked base.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from proofkd.core.logs import get_logger

LOG = get_logger(__name__)

# Rows per chunk aim at this many logits per [rows, vocab] float32 buffer
# (128 MiB); a chunk holds a handful of such buffers at its peak.
_AUTO_CHUNK_ELEMENTS = 1 << 25

# (logits [rows, vocab], *row inputs, *constants) -> (loss scalar, sums vector)
ChunkLoss = Callable[..., tuple[torch.Tensor, torch.Tensor]]
# chunk's row indices -> the chunk loss's row inputs (tensors or None)
RowInputs = Callable[[torch.Tensor], Sequence[torch.Tensor | None]]


def auto_chunk_size(vocab: int) -> int:
    return max(16, (_AUTO_CHUNK_ELEMENTS // max(vocab, 1)) // 16 * 16)


def compile_by_default(device: torch.device) -> bool:
    """Compile wherever Inductor has a backend (CPU and CUDA); elsewhere stay eager."""
    return device.type in ("cpu", "cuda")


# One compiled step per chunk loss; None once compiling it has failed.
_COMPILED: dict[tuple[ChunkLoss, bool], Callable | None] = {}


def _step(chunk_loss: ChunkLoss, want_grad: bool) -> Callable:
    """The chunk's (d loss / d logits or None, (loss, sums)), eagerly."""
    if not want_grad:
        return lambda z, *rest: (None, chunk_loss(z, *rest))
    return torch.func.grad_and_value(chunk_loss, argnums=0, has_aux=True)


def _run_step(chunk_loss: ChunkLoss, want_grad: bool, compiled: bool, args: tuple):
    """(d loss / d logits or None, (loss, sums)) of one chunk, compiled unless compiling has failed."""
    key = (chunk_loss, want_grad)
    if compiled:
        if key not in _COMPILED:
            _COMPILED[key] = torch.compile(_step(chunk_loss, want_grad), dynamic=None)
        fn = _COMPILED[key]
        if fn is not None:
            try:
                return fn(*args)
            except torch.OutOfMemoryError:
                raise
            except Exception as error:  # a backend that cannot build it: stay correct, eagerly
                LOG.warning(
                    "loss head: torch.compile failed (%s: %s); using the eager path", type(error).__name__, error
                )
                _COMPILED[key] = None
    return _step(chunk_loss, want_grad)(*args)


class _ChunkedHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, rows, chunk_size, row_inputs, chunk_loss, constants, n_sums, options):
        want_grad, compiled = options
        want_hidden = want_grad and ctx.needs_input_grad[0]
        want_weight = want_grad and ctx.needs_input_grad[1]
        want_grad = want_hidden or want_weight
        grad_hidden = torch.zeros_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        sums = torch.zeros(n_sums, dtype=torch.float64, device=hidden.device)
        for start in range(0, rows.numel(), chunk_size):
            idx = rows[start : start + chunk_size]
            h = hidden[idx].to(weight.dtype)
            z = h @ weight.T
            grad, (chunk_value, chunk_sums) = _run_step(
                chunk_loss, want_grad, compiled, (z, *row_inputs(idx), *constants)
            )
            loss += chunk_value.detach()
            sums += chunk_sums.detach().double()
            if grad is not None:
                grad = grad.to(weight.dtype)
                if grad_hidden is not None:
                    grad_hidden[idx] = (grad @ weight).to(grad_hidden.dtype)
                if grad_weight is not None:
                    _accumulate(grad_weight, grad.T, h)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
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
        return grad_hidden, grad_weight, None, None, None, None, None, None, None


def chunked_head(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    rows: torch.Tensor,
    row_inputs: RowInputs,
    chunk_loss: ChunkLoss,
    *,
    constants: tuple = (),
    n_sums: int,
    chunk_size: int | None = None,
    compile: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """sum over chunks of `chunk_loss(H[idx] W^T, *row_inputs(idx), *constants)`, and the summed float64 sums.

    `rows` lists the token rows that count (the others get no gradient);
    the loss is differentiable in `hidden` and `weight`. `compile=None`
    follows `compile_by_default`.
    """
    compiled = compile_by_default(hidden.device) if compile is None else bool(compile)
    want_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _ChunkedHead.apply(
        hidden,
        weight,
        rows,
        int(chunk_size or auto_chunk_size(weight.shape[0])),
        row_inputs,
        chunk_loss,
        tuple(constants),
        n_sums,
        (want_grad, compiled),
    )


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
