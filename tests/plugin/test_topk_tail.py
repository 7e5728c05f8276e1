"""A top-k teacher with a tail bucket: k + 1 outcomes per token, held to the float64 form."""

from __future__ import annotations

import math

import pytest
import torch

from proofkd.plugin.loss import get_divergence, proof_kd_loss, proof_kd_loss_float64
from tests.plugin.loss_helpers import compare, make_inputs, run, sparse_inputs, topk_of


@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_bucket_matches_float64(seed, k, temperature):
    inputs = make_inputs(seed)
    compare(
        sparse_inputs(inputs),
        2.5,
        chunk_size=6,
        temperature=temperature,
        teacher_topk=topk_of(inputs, k),
        topk_tail="bucket",
    )


def test_bucket_with_unused_slots_and_jsd_matches_float64(seed):
    inputs = make_inputs(seed)
    ids, logps = topk_of(inputs, 8)
    logps[:, 5:] = -torch.inf  # the server answered fewer than k entries
    for divergence in (get_divergence("forward_kl"), get_divergence("jsd", beta=0.3)):
        compare(
            sparse_inputs(inputs),
            2.5,
            chunk_size=4,
            teacher_topk=(ids, logps),
            topk_tail="bucket",
            divergence=divergence,
        )


def test_a_full_topk_with_a_bucket_is_the_whole_teacher(seed):
    inputs = make_inputs(seed)
    dense = run(proof_kd_loss, inputs, 2.0, chunk_size=7)
    bucket = run(
        proof_kd_loss, sparse_inputs(inputs), 2.0, chunk_size=7, teacher_topk=topk_of(inputs, 41), topk_tail="bucket"
    )
    for index, what in ((0, "loss"), (2, "grad of student hidden"), (3, "grad of student weight")):
        assert torch.allclose(bucket[index], dense[index], rtol=1e-4, atol=1e-6), what


def test_at_t1_the_bucket_kl_bounds_the_full_kl_from_below_and_renormalising_does_not(seed):
    """Merging outcomes can only lose information (the data-processing inequality); renormalising can overshoot."""
    inputs = make_inputs(seed, masked=0.0)
    full = proof_kd_loss_float64(*inputs, 1.0, temperature=1.0)[1]["kl"]
    bucket = proof_kd_loss_float64(
        *sparse_inputs(inputs), 1.0, temperature=1.0, teacher_topk=topk_of(inputs, 3), topk_tail="bucket"
    )[1]["kl"]
    assert bucket <= full + 1e-9
    ks = [
        proof_kd_loss_float64(
            *sparse_inputs(inputs), 1.0, temperature=1.0, teacher_topk=topk_of(inputs, k), topk_tail="bucket"
        )[1]["kl"]
        for k in (1, 3, 10, 41)
    ]
    # the top-k log-probs arrive in float32, as from a server: the whole vocabulary matches to that precision
    assert ks == sorted(ks) and math.isclose(ks[-1], full, rel_tol=1e-6)


def test_the_teacher_tail_mass_is_summed_and_logged(seed):
    inputs = make_inputs(seed)
    labels = inputs[4]
    ids, logps = topk_of(inputs, 4)
    for tail in ("renormalize", "bucket"):
        _, stats = proof_kd_loss(*sparse_inputs(inputs), 2.5, teacher_topk=(ids, logps), topk_tail=tail)
        valid = labels != -100
        expected = (1.0 - logps.double().exp().sum(-1))[valid].mean().item()
        assert math.isclose(stats.means(2.0)["teacher_tail_mass"], expected, rel_tol=1e-6)
    _, dense_stats = proof_kd_loss(*inputs, 2.5)
    assert "teacher_tail_mass" not in dense_stats.means(2.0)


def test_an_unknown_tail_is_refused(seed):
    inputs = make_inputs(seed)
    with pytest.raises(ValueError, match="topk_tail must be one of renormalize, bucket"):
        proof_kd_loss(*sparse_inputs(inputs), 2.5, teacher_topk=topk_of(inputs, 4), topk_tail="drop")
