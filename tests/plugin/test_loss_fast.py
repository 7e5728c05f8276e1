"""The compiled loss head against the float64 form, and the fast path's in-place and accumulation steps.

The compiled head (`compile=True`) runs the same formula as the eager one
through `torch.compile`; on a CPU that is Inductor's C++ backend, on CUDA its
Triton backend (the CUDA tests run only where a GPU is present). All inputs
share one shape so that the compiled kernels are built once per process.
"""

from __future__ import annotations

import pytest
import torch

from proofkd.plugin.loss import chunked, proof_kd_loss, proof_kd_loss_float64
from proofkd.plugin.loss.proof_kd import stage1_chunk_loss
from tests.plugin.loss_helpers import assert_close, make_inputs, relative_error, run

TRAINING_STEP = (stage1_chunk_loss, True)  # the compiled step a training call runs

SHAPE = dict(n=37, h=16, ht=12, v=53, vt=53)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def compiled(*args, **kw):
    return proof_kd_loss(*args, compile=True, **kw)


def on(device, inputs):
    moved = []
    for t in inputs:
        m = t.detach().to(device)
        moved.append(m.requires_grad_() if t.requires_grad else m)
    return tuple(moved)


def assert_compiled_matches_float64(inputs, proof_weight, rtol=1e-5, atol=1e-6, **kw):
    fast = run(compiled, inputs, proof_weight, **kw)
    ref = run(proof_kd_loss_float64, inputs, proof_weight, **{k: v for k, v in kw.items() if k != "chunk_size"})
    assert chunked._COMPILED.get(TRAINING_STEP) is not None, "compiling failed and the head fell back to eager"
    for index, what in ((0, "loss"), (2, "grad of student hidden"), (3, "grad of student weight")):
        assert torch.isfinite(fast[index]).all(), what
        assert_close(fast[index].cpu(), ref[index].cpu(), rtol, atol, what)
    assert_close(fast[1].sums.cpu(), ref[1].sums.cpu(), rtol, atol, "stats")


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_head_matches_float64_with_ignored_tokens(seed, device):
    """A chunk size that leaves a shorter last chunk, ignored labels, and weighted proof tokens."""
    inputs = on(device, make_inputs(seed, masked=0.3, **SHAPE))
    assert_compiled_matches_float64(inputs, 2.5, chunk_size=8)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_head_with_a_smaller_teacher_vocabulary(seed, device):
    inputs = on(device, make_inputs(seed, **{**SHAPE, "vt": 47}))
    assert_compiled_matches_float64(inputs, 1.5, chunk_size=8)


def test_compiled_head_without_teacher(seed):
    hs, ws, _, _, labels, proof = make_inputs(seed, **SHAPE)
    assert_compiled_matches_float64((hs, ws, None, None, labels, proof), 2.5, ce_coef=1.0, kd_coef=0.0, chunk_size=8)


def test_compiled_head_all_masked_is_zero(seed):
    inputs = make_inputs(seed, masked=1.1, **SHAPE)
    loss, stats, grad_hidden, grad_weight = run(compiled, inputs, 2.5, chunk_size=8)
    assert loss.item() == 0.0 and stats["proof_tokens"] == 0 and stats["other_tokens"] == 0
    assert torch.all(grad_hidden == 0) and torch.all(grad_weight == 0)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_head_extreme_logits_and_ruled_out_tokens_stay_finite(seed, device):
    """Logits in the thousands and a teacher that gives some tokens probability 0 (logit -inf)."""
    hs, ws, ht, wt, labels, proof = make_inputs(seed, scale=300.0, **SHAPE)
    ht, wt = ht.clone(), wt.clone()
    ht[:, 0] = 1.0
    wt[:5, 0] = -float("inf")
    wt[:5, 1:] = 0.0
    inputs = on(device, (hs, ws, ht, wt, labels, proof))
    fast = run(compiled, inputs, 2.5, chunk_size=8)
    ref = run(proof_kd_loss_float64, inputs, 2.5)
    for index, name in ((0, "loss"), (2, "grad of student hidden"), (3, "grad of student weight")):
        assert torch.isfinite(fast[index]).all(), name
        assert relative_error(fast[index].cpu(), ref[index].cpu()) < 1e-4, name


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_head_bfloat16_within_bf16_tolerance(seed, device):
    inputs = on(device, make_inputs(seed, dtype=torch.bfloat16, **SHAPE))
    fast = run(compiled, inputs, 2.5, chunk_size=8)
    ref = run(proof_kd_loss_float64, inputs, 2.5)
    assert_close(fast[0].cpu(), ref[0].cpu(), 2e-2, 1e-3, "loss")
    for index, name in ((2, "hidden"), (3, "weight")):
        assert relative_error(fast[index].cpu(), ref[index].cpu()) < 2e-2, f"grad of student {name}"


def test_compiled_and_eager_heads_agree(seed):
    inputs = make_inputs(seed, **SHAPE)
    eager = run(proof_kd_loss, inputs, 2.5, chunk_size=8, compile=False)
    fast = run(compiled, inputs, 2.5, chunk_size=8)
    for index, what in ((0, "loss"), (2, "grad of student hidden"), (3, "grad of student weight")):
        assert_close(fast[index], eager[index], 1e-5, 1e-7, what)


def test_a_failing_compiler_falls_back_to_the_eager_head(seed, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no backend here")

    monkeypatch.setitem(chunked._COMPILED, TRAINING_STEP, broken)
    inputs = make_inputs(seed, **SHAPE)
    fast = run(compiled, inputs, 2.5, chunk_size=8)
    ref = run(proof_kd_loss_float64, inputs, 2.5)
    assert chunked._COMPILED[TRAINING_STEP] is None
    assert_close(fast[0], ref[0], 1e-5, 1e-6, "loss")
    assert_close(fast[3], ref[3], 1e-5, 1e-6, "grad of student weight")


def test_backward_scales_by_the_incoming_gradient(seed):
    """Backward scales the stored gradients in place; an outer factor must still reach them exactly once."""
    inputs = make_inputs(seed, **SHAPE)
    hs, ws = inputs[0], inputs[1]
    loss, _ = proof_kd_loss(*inputs, 2.5, chunk_size=8)
    (3.0 * loss).backward()
    grad_hidden, grad_weight = hs.grad.double(), ws.grad.double()
    ref = run(proof_kd_loss_float64, inputs, 2.5)
    assert_close(grad_hidden, 3.0 * ref[2], 1e-5, 1e-6, "grad of student hidden")
    assert_close(grad_weight, 3.0 * ref[3], 1e-5, 1e-6, "grad of student weight")


def test_a_second_backward_through_the_head_fails_instead_of_scaling_twice(seed):
    inputs = make_inputs(seed, **SHAPE)
    loss, _ = proof_kd_loss(*inputs, 2.5, chunk_size=8)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_float32_accumulation_matches_a_float32_product():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(9, 5, generator=g, dtype=torch.bfloat16), torch.randn(5, 7, generator=g, dtype=torch.bfloat16)
    acc = torch.randn(9, 7, generator=g)
    want = acc + a.float() @ b.float()
    chunked._accumulate(acc, a, b)
    assert torch.allclose(acc, want, rtol=1e-2, atol=1e-2)
    acc32 = torch.zeros(9, 7)
    chunked._accumulate(acc32, a.float(), b.float())
    assert torch.allclose(acc32, a.float() @ b.float(), rtol=1e-6, atol=1e-6)
