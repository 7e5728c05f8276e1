"""Each divergence against its float64 form: alone, inside the loss head, and with a top-k teacher."""

from __future__ import annotations

import math

import pytest
import torch

from proofkd.plugin.loss import DIVERGENCES, get_divergence, proof_kd_loss, proof_kd_loss_float64
from tests.plugin.loss_helpers import compare, make_inputs, run, sparse_inputs, topk_of

CHOICES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.1}),
    ("jsd", {"beta": 0.9}),
]


def distributions(seed, rows=7, vocab=23, scale=3.0):
    """Log-probabilities of a student and a teacher, float64."""
    g = torch.Generator().manual_seed(seed)
    log_p = torch.log_softmax(scale * torch.randn(rows, vocab, generator=g, dtype=torch.float64), -1)
    log_q = torch.log_softmax(scale * torch.randn(rows, vocab, generator=g, dtype=torch.float64), -1)
    return log_p, log_q


@pytest.mark.parametrize("name, params", CHOICES)
def test_fast_function_matches_its_float64_form_in_value_and_gradient(seed, name, params):
    divergence = get_divergence(name, **params)
    log_p, log_q = distributions(seed)
    grads = []
    for fn in (divergence.per_token, divergence.float64):
        x = log_p.clone().requires_grad_()
        value = fn(x, log_q)
        grads.append((value.detach(), torch.autograd.grad(value.sum(), x)[0]))
    (fast, grad_fast), (ref, grad_ref) = grads
    assert torch.allclose(fast, ref, rtol=1e-10, atol=1e-12)
    assert torch.allclose(grad_fast, grad_ref, rtol=1e-8, atol=1e-12)
    assert torch.allclose(divergence.per_token(log_p.float(), log_q.float()).double(), ref, rtol=1e-4, atol=1e-6)


def test_the_kls_agree_with_torch_kl_div(seed):
    """An outside oracle: torch.nn.functional.kl_div(input=log y, target=log x, log_target) is KL(x || y)."""
    log_p, log_q = distributions(seed)

    def kl(log_x, log_y):
        return torch.nn.functional.kl_div(log_y, log_x, reduction="none", log_target=True).sum(-1)

    assert torch.allclose(get_divergence("forward_kl").float64(log_p, log_q), kl(log_q, log_p))
    assert torch.allclose(get_divergence("reverse_kl").float64(log_p, log_q), kl(log_p, log_q))


@pytest.mark.parametrize("name, params", CHOICES)
def test_a_divergence_is_zero_only_between_equal_distributions(seed, name, params):
    divergence = get_divergence(name, **params)
    log_p, log_q = distributions(seed)
    assert torch.allclose(
        divergence.float64(log_p, log_p), torch.zeros(log_p.shape[0], dtype=torch.float64), atol=1e-12
    )
    assert bool((divergence.float64(log_p, log_q) > 0).all())


def test_known_relations_between_the_divergences(seed):
    log_p, log_q = distributions(seed)
    forward, reverse = get_divergence("forward_kl"), get_divergence("reverse_kl")
    half = get_divergence("jsd", beta=0.5)
    assert torch.allclose(reverse.float64(log_p, log_q), forward.float64(log_q, log_p))
    value = half.float64(log_p, log_q)
    assert bool((value <= math.log(2) + 1e-12).all())
    assert torch.allclose(value, half.float64(log_q, log_p))  # symmetric at beta = 0.5
    log_m = (0.5 * (log_p.exp() + log_q.exp())).log()
    assert torch.allclose(value, 0.5 * forward.float64(log_m, log_q) + 0.5 * forward.float64(log_m, log_p))


def test_jsd_ends_are_the_two_kls_as_in_gkd():
    assert get_divergence("jsd", beta=0.0).name == "forward_kl"
    assert get_divergence("jsd", beta=1.0).name == "reverse_kl"
    with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]"):
        get_divergence("jsd", beta=1.5)
    with pytest.raises(ValueError, match="unknown divergence 'kl'.*forward_kl"):
        get_divergence("kl")


@pytest.mark.parametrize("name, params", CHOICES)
@pytest.mark.parametrize("chunk_size", [5, None])
def test_loss_head_matches_float64_for_each_divergence(seed, name, params, chunk_size):
    divergence = get_divergence(name, **params)
    compare(make_inputs(seed), 2.5, chunk_size=chunk_size, divergence=divergence, temperature=1.5)


@pytest.mark.parametrize("params", [{"beta": 0.5}, {"beta": 0.2}])
def test_jsd_runs_on_a_topk_teacher(seed, params):
    inputs = make_inputs(seed)
    compare(
        sparse_inputs(inputs),
        2.5,
        chunk_size=4,
        teacher_topk=topk_of(inputs, 5),
        divergence=get_divergence("jsd", **params),
    )


def test_reverse_kl_is_refused_on_a_topk_teacher(seed):
    inputs = make_inputs(seed)
    with pytest.raises(ValueError, match="reverse_kl is infinite on a top-k teacher.*forward_kl or jsd"):
        proof_kd_loss(
            *sparse_inputs(inputs), 2.5, teacher_topk=topk_of(inputs, 5), divergence=get_divergence("reverse_kl")
        )


def test_divergences_differ_from_each_other(seed):
    """A head that ignored its divergence argument would give the same loss for every choice."""
    inputs = make_inputs(seed)
    losses = {name: run(proof_kd_loss, inputs, 2.5, divergence=get_divergence(name))[0].item() for name in DIVERGENCES}
    assert len({round(v, 6) for v in losses.values()}) == len(losses), losses
    ref = proof_kd_loss_float64(*inputs, 2.5, divergence=get_divergence("reverse_kl"))[0].item()
    assert math.isclose(losses["reverse_kl"], ref, rel_tol=1e-5)
