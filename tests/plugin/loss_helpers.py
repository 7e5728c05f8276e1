"""Inputs and comparisons shared by the loss-head tests (test_loss, test_loss_fast, test_divergences)."""

from __future__ import annotations

import torch

from proofkd.plugin.loss import proof_kd_loss, proof_kd_loss_float64


def make_inputs(seed, n=29, h=12, ht=10, v=41, vt=41, masked=0.2, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    student_hidden = (scale * torch.randn(n, h, generator=g)).to(dtype).requires_grad_()
    student_weight = torch.randn(v, h, generator=g).to(dtype).requires_grad_()
    teacher_hidden = (scale * torch.randn(n, ht, generator=g)).to(dtype)
    teacher_weight = torch.randn(vt, ht, generator=g).to(dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < masked] = -100
    proof = (torch.rand(n, generator=g) < 0.5).long()
    return student_hidden, student_weight, teacher_hidden, teacher_weight, labels, proof


def run(fn, inputs, proof_weight, **kw):
    hs, ws = inputs[0], inputs[1]
    hs.grad = ws.grad = None
    loss, stats = fn(*inputs, proof_weight, **kw)
    loss.backward()
    return loss.detach().double(), stats, hs.grad.double(), ws.grad.double()


def assert_close(fast, ref, rtol, atol, what):
    assert torch.allclose(fast, ref, rtol=rtol, atol=atol), (
        f"{what}: max abs diff {(fast - ref).abs().max().item():.3g}, max ref {ref.abs().max().item():.3g}"
    )


def compare(inputs, proof_weight, rtol=1e-5, atol=1e-6, **kw):
    chunk = kw.pop("chunk_size", None)
    fast = run(proof_kd_loss, inputs, proof_weight, chunk_size=chunk, **kw)
    ref = run(proof_kd_loss_float64, inputs, proof_weight, **kw)
    assert_close(fast[0], ref[0], rtol, atol, "loss")
    assert_close(fast[2], ref[2], rtol, atol, "grad of student hidden")
    assert_close(fast[3], ref[3], rtol, atol, "grad of student weight")
    assert_close(fast[1].sums, ref[1].sums, rtol, atol, "stats")
    return fast, ref


def relative_error(fast, ref):
    return ((fast - ref).norm() / ref.norm().clamp(min=1e-30)).item()


def topk_of(inputs, k, vocab=None):
    """The teacher's top-k ids and log-probs at T = 1, as a server returns them."""
    _, _, th, tw, _, _ = inputs
    log_q = torch.log_softmax((th.double() @ tw.double().T)[:, :vocab], dim=-1)
    top = log_q.topk(k, dim=-1)
    return top.indices, top.values.float()


def sparse_inputs(inputs):
    hs, ws, _, _, labels, proof = inputs
    return hs, ws, None, None, labels, proof
