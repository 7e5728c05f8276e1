"""Per-span figures (prompt, derivation, answer): which span each token is in, the fast head's sums held to the
float64 reference on random spans for every kind of teacher, and spans without tokens left out of the log."""

from __future__ import annotations

import math
import random

import pytest
import torch

from proofkd.plugin.loss import proof_kd_loss, proof_kd_loss_float64
from proofkd.plugin.loss.stats import ANSWER, DERIVATION, PROMPT, SPANS, LossStats, token_spans
from tests.plugin.loss_helpers import compare, make_inputs, sparse_inputs, topk_of

SEEDS = [random.randrange(2**31) for _ in range(2)]


def test_each_token_is_in_the_span_its_row_puts_it():
    labels = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [-100, -100, 3, 4, 5, 6]])
    proof = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]])
    P, D, A = PROMPT, DERIVATION, ANSWER
    assert token_spans(labels, proof).tolist() == [[P, P, D, D, A, A], [A, A, A, A, A, A], [P, P, D, A, A, A]]


def random_spans(labels: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.randint(0, len(SPANS), labels.shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("teacher", ["full", "topk", "bucket", "none"])
def test_span_sums_match_the_float64_reference(seed, teacher):
    inputs = make_inputs(seed, n=37, v=53, vt=53)
    spans = random_spans(inputs[4], seed + 1)
    options = {"spans": spans, "chunk_size": 8}
    if teacher in ("topk", "bucket"):
        options.update(teacher_topk=topk_of(inputs, 12), topk_tail="renormalize" if teacher == "topk" else "bucket")
    if teacher == "none":
        inputs, options["kd_coef"] = sparse_inputs(inputs), 0.0
    fast, ref = compare(inputs, 1.7, rtol=1e-5, atol=1e-5, **options)
    means = fast[1].means(2.0)
    valid = inputs[4] != -100
    for index, span in enumerate(SPANS):
        assert means[f"{span}/tokens"] == int((valid & (spans == index)).sum())
    assert ("derivation/teacher_entropy" in means) == (teacher != "none")


def test_figures_of_known_distributions():
    """A uniform student over V tokens has entropy ln V; a teacher whose top token takes all its mass has
    entropy 0, and a student that copies it puts all its mass on the teacher's top tokens."""
    n, h, v = 4, 3, 11
    hidden = torch.zeros(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    teacher_hidden = torch.ones(n, 1)
    teacher_weight = torch.zeros(v, 1)
    teacher_weight[5] = 200.0
    labels = torch.full((n,), 5)
    _, stats = proof_kd_loss_float64(hidden, weight, teacher_hidden, teacher_weight, labels, torch.zeros(n), 1.0)
    means = stats.means(2.0)
    assert means["answer/student_entropy"] == pytest.approx(math.log(v))
    assert means["answer/teacher_entropy"] == pytest.approx(0.0, abs=1e-9)
    assert means["answer/topk_overlap"] == pytest.approx(16 / v if v > 16 else 1.0)
    _, fast = proof_kd_loss(hidden, weight, teacher_hidden, teacher_weight, labels, torch.zeros(n), 1.0, compile=False)
    assert fast.means(2.0)["answer/student_entropy"] == pytest.approx(math.log(v), rel=1e-5)


def test_a_span_without_tokens_logs_nothing():
    inputs = make_inputs(3, n=20)
    labels, proof = inputs[4], torch.zeros_like(inputs[5])
    _, stats = proof_kd_loss(*inputs[:4], labels, proof, 1.0, compile=False)
    means = stats.means(2.0)
    assert not [key for key in means if key.startswith(("prompt/", "derivation/"))]
    assert means["answer/tokens"] == int((labels != -100).sum()) and "answer/kl" in means
    assert all(math.isfinite(value) for key, value in means.items() if "/" in key)
    assert LossStats.zeros().means(2.0).keys().isdisjoint({f"{span}/tokens" for span in SPANS})
