"""The chunked loss head against its float64 form: values, gradients, edge cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from proofkd.plugin.loss import auto_chunk_size, proof_kd_loss, proof_kd_loss_float64
from tests.plugin.loss_helpers import assert_close, compare, make_inputs, relative_error, run, sparse_inputs, topk_of


@pytest.mark.parametrize("chunk_size", [1, 5, 64, None])
@pytest.mark.parametrize("proof_weight", [2.5, 1.0, 0.0])
def test_matches_float64(seed, chunk_size, proof_weight):
    compare(make_inputs(seed), proof_weight, chunk_size=chunk_size)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("coefs", [(0.55, 0.45), (1.0, 0.0), (0.0, 1.0), (0.3, 2.0)])
def test_matches_float64_across_temperatures_and_mixes(seed, temperature, coefs):
    ce_coef, kd_coef = coefs
    compare(make_inputs(seed), 1.7, temperature=temperature, ce_coef=ce_coef, kd_coef=kd_coef, chunk_size=8)


@pytest.mark.parametrize("sizes", [(41, 37), (37, 41)])
def test_kl_runs_over_shared_vocabulary_rows(seed, sizes):
    v, vt = sizes
    compare(make_inputs(seed, v=v, vt=vt), 2.0, chunk_size=6)


def test_ignored_tokens_get_no_gradient_and_no_weight(seed):
    inputs = make_inputs(seed, masked=0.5)
    labels = inputs[4]
    _, stats, grad_hidden, _ = run(proof_kd_loss, inputs, 2.5, chunk_size=4)
    assert torch.all(grad_hidden[labels == -100] == 0)
    assert torch.any(grad_hidden[labels != -100] != 0)
    assert stats["proof_tokens"] + stats["other_tokens"] == (labels != -100).sum().item()


def test_all_masked_batch_is_zero_and_finite(seed):
    inputs = make_inputs(seed, masked=1.1)
    loss, stats, grad_hidden, grad_weight = run(proof_kd_loss, inputs, 2.5, chunk_size=4)
    assert loss.item() == 0.0
    assert torch.all(grad_hidden == 0) and torch.all(grad_weight == 0)
    assert stats["proof_tokens"] == 0 and stats["other_tokens"] == 0
    ref_loss = run(proof_kd_loss_float64, inputs, 2.5)[0]
    assert ref_loss.item() == 0.0


def test_extreme_logits_stay_finite_and_exact(seed):
    """Logits in the thousands: float32 rounds them to about 1e-7 * |logit|; nothing worse may happen.

    Here |logit| reaches a few thousand, so round-off alone gives relative errors up to ~1e-5;
    a genuine error (a lost term, a wrong shift) shows up as 1e-2 or worse.
    """
    inputs = make_inputs(seed, scale=300.0)
    fast = run(proof_kd_loss, inputs, 2.5, chunk_size=7)
    ref = run(proof_kd_loss_float64, inputs, 2.5)
    assert all(torch.isfinite(t).all() for t in (fast[0], fast[2], fast[3]))
    for index, name in ((0, "loss"), (2, "grad of student hidden"), (3, "grad of student weight")):
        assert relative_error(fast[index], ref[index]) < 1e-4, name


def test_teacher_with_zero_probability_tokens(seed):
    """A teacher that rules tokens out (logit -inf) must not turn the KL into NaN."""
    hs, ws, ht, wt, labels, proof = make_inputs(seed)
    ht, wt = ht.clone(), wt.clone()
    ht[:, 0] = 1.0
    wt[:5, 0] = -float("inf")  # rows 0..4 of the teacher's logits become -inf
    wt[:5, 1:] = 0.0
    inputs = (hs, ws, ht, wt, labels, proof)
    fast = run(proof_kd_loss, inputs, 2.5, chunk_size=5)
    ref = run(proof_kd_loss_float64, inputs, 2.5)
    assert torch.isfinite(fast[0]) and torch.isfinite(fast[2]).all()
    assert_close(fast[0], ref[0], 1e-5, 1e-6, "loss")
    assert_close(fast[2], ref[2], 1e-5, 1e-6, "grad of student hidden")


def test_bfloat16_inputs_stay_within_bf16_tolerance(seed):
    inputs = make_inputs(seed, n=64, h=32, ht=32, v=300, vt=300, dtype=torch.bfloat16)
    fast = run(proof_kd_loss, inputs, 2.5, chunk_size=16)
    ref = run(proof_kd_loss_float64, inputs, 2.5)
    assert_close(fast[0], ref[0], 2e-2, 1e-3, "loss")
    # gradients are rounded to bf16 once per chunk; compare by relative norm
    for index, name in ((2, "hidden"), (3, "weight")):
        rel = relative_error(fast[index], ref[index])
        assert rel < 2e-2, f"grad of student {name}: relative error {rel:.3g}"


def test_micro_batches_with_step_denominators_add_up_to_the_whole_batch(seed):
    """What gradient accumulation relies on: split loss + shared denominators == whole loss."""
    inputs = make_inputs(seed, n=40)
    hs, ws, ht, wt, labels, proof = inputs
    valid = labels != -100
    d_kd = valid.sum()
    d_ce = valid.sum() + (2.5 - 1.0) * (proof.bool() & valid).sum()
    whole, _ = proof_kd_loss(hs, ws, ht, wt, labels, proof, 2.5)
    parts = sum(
        proof_kd_loss(hs[s], ws, ht[s], wt, labels[s], proof[s], 2.5, ce_denominator=d_ce, kd_denominator=d_kd)[0]
        for s in (slice(0, 13), slice(13, 31), slice(31, 40))
    )
    assert torch.allclose(whole, parts, rtol=1e-6), (whole.item(), parts.item())


@pytest.mark.parametrize("normalisation", ["weights", "tokens"])
def test_given_denominators_match_float64(seed, normalisation):
    inputs = make_inputs(seed)
    labels = inputs[4]
    d = (labels != -100).sum().item() + 3
    d_ce = d if normalisation == "tokens" else 2 * d
    compare(inputs, 2.5, ce_denominator=d_ce, kd_denominator=d, chunk_size=9)


def test_stats_give_the_logged_means(seed):
    inputs = make_inputs(seed)
    hs, ws, ht, wt, labels, proof = inputs
    _, stats = proof_kd_loss(*inputs, 2.5, temperature=2.0)
    valid = labels != -100
    logits = hs.double() @ ws.double().T
    ce = torch.nn.functional.cross_entropy(logits[valid], labels[valid], reduction="none")
    is_proof = proof[valid].bool()
    means = stats.means(temperature=2.0)
    assert math.isclose(means["ce_proof"], ce[is_proof].mean().item(), rel_tol=1e-5)
    assert math.isclose(means["ce_other"], ce[~is_proof].mean().item(), rel_tol=1e-5)
    assert math.isclose(means["proof_token_frac"], is_proof.double().mean().item(), rel_tol=1e-9)
    assert math.isclose(means["kd_term"], 4.0 * means["kl"], rel_tol=1e-12)


def test_no_gradient_work_without_grad(seed):
    inputs = make_inputs(seed)
    with torch.no_grad():
        loss, _ = proof_kd_loss(*inputs, 2.5)
    ref, _ = proof_kd_loss_float64(*inputs, 2.5)
    assert not loss.requires_grad
    assert math.isclose(loss.item(), ref.item(), rel_tol=1e-5)


def test_teacher_free_weighted_cross_entropy(seed):
    hs, ws, _, _, labels, proof = make_inputs(seed)
    fast = run(proof_kd_loss, (hs, ws, None, None, labels, proof), 2.5, ce_coef=1.0, kd_coef=0.0)
    ref = run(proof_kd_loss_float64, (hs, ws, None, None, labels, proof), 2.5, ce_coef=1.0, kd_coef=0.0)
    assert_close(fast[0], ref[0], 1e-5, 1e-6, "loss")
    assert_close(fast[2], ref[2], 1e-5, 1e-6, "grad of student hidden")


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tokens_by_vocab_tensor_is_ever_created(seed):
    n, v = 96, 500
    inputs = make_inputs(seed, n=n, v=v, vt=v, masked=0.0)
    with _LargestTensor() as probe:
        loss, _ = proof_kd_loss(*inputs, 2.5, chunk_size=16)
        loss.backward()
    assert probe.largest <= 16 * v, f"largest tensor had {probe.largest} elements; a chunk has {16 * v}"


def test_auto_chunk_keeps_a_chunk_buffer_near_128_mib():
    for vocab in (49152, 151936, 262144):
        rows = auto_chunk_size(vocab)
        assert rows >= 16 and rows % 16 == 0
        assert rows * vocab * 4 <= 128 * 2**20 or rows == 16


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(labels=torch.zeros(3, dtype=torch.long)), "labels"),
        (dict(teacher_hidden=None), "teacher_hidden"),
        (dict(student_weight=torch.randn(41, 5)), "hidden size"),
    ],
)
def test_shape_errors_name_the_input(seed, bad, message):
    hs, ws, ht, wt, labels, proof = make_inputs(seed)
    kwargs = dict(
        student_hidden=hs, student_weight=ws, teacher_hidden=ht, teacher_weight=wt, labels=labels, proof_mask=proof
    )
    kwargs.update(bad)
    with pytest.raises(ValueError, match=message):
        proof_kd_loss(proof_weight=2.5, **kwargs)


# --- a teacher given as top-k log-probabilities (an inference server's answer) ------------------


@pytest.mark.parametrize("k", [1, 5, 41])
@pytest.mark.parametrize("chunk_size", [3, None])
def test_topk_teacher_matches_float64(seed, k, chunk_size):
    inputs = make_inputs(seed)
    compare(sparse_inputs(inputs), 2.5, chunk_size=chunk_size, teacher_topk=topk_of(inputs, k))


def test_a_full_topk_is_the_whole_teacher(seed):
    """With k = the vocabulary, the server's answer carries the whole distribution: same loss and gradients."""
    inputs = make_inputs(seed)
    dense = run(proof_kd_loss, inputs, 2.0, chunk_size=7)
    sparse = run(proof_kd_loss, sparse_inputs(inputs), 2.0, chunk_size=7, teacher_topk=topk_of(inputs, 41))
    for index, what in ((0, "loss"), (2, "grad of student hidden"), (3, "grad of student weight")):
        assert_close(sparse[index], dense[index], 1e-4, 1e-6, what)


def test_topk_renormalises_the_teacher_over_its_k_tokens(seed):
    """k = 1 puts all the teacher's mass on its argmax: the KL is then -log p_T(argmax) of the student."""
    inputs = make_inputs(seed, masked=0.0)
    hs, ws, *_ = inputs
    ids, logps = topk_of(inputs, 1)
    _, stats = proof_kd_loss(*sparse_inputs(inputs), 1.0, temperature=2.0, teacher_topk=(ids, logps))
    log_p_t = torch.log_softmax((hs.double() @ ws.double().T) / 2.0, dim=-1)
    expected = -log_p_t.gather(1, ids).sum().detach()
    assert math.isclose(float(stats.sums[4]), float(expected), rel_tol=1e-5)


def test_topk_with_unused_slots_and_errors(seed):
    inputs = make_inputs(seed)
    ids, logps = topk_of(inputs, 6)
    logps[:, 4:] = -torch.inf  # a server that answered fewer than k entries for every token
    compare(sparse_inputs(inputs), 2.5, chunk_size=4, teacher_topk=(ids, logps))
    labels = inputs[4]
    trained = int((labels != -100).nonzero()[0, 0])
    hollow = logps.clone()
    hollow[trained] = -torch.inf
    with pytest.raises(ValueError, match=f"no finite log-probability for trained token {trained}"):
        proof_kd_loss(*sparse_inputs(inputs), 2.5, teacher_topk=(ids, hollow))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 41\)"):
        proof_kd_loss(*sparse_inputs(inputs), 2.5, teacher_topk=(ids + 41, logps))
    with pytest.raises(ValueError, match="two \\[tokens, k\\] tensors"):
        proof_kd_loss(*sparse_inputs(inputs), 2.5, teacher_topk=(ids[:-1], logps[:-1]))
