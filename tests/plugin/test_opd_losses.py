"""OPD's estimators and clipped loss against the float64 form; token log-probs against plain log-softmax."""

from __future__ import annotations

import math

import pytest
import torch

from proofkd.plugin.logprobs import overlap_mass, token_log_probs
from proofkd.plugin.opd.float64 import kl_estimate_float64, opd_loss_float64
from proofkd.plugin.opd.losses import clipped_policy_loss, kl_estimate, opd_loss


def inputs(seed, rows=5, cols=9, spread=0.6):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, cols, generator=g, dtype=torch.float64) * 4
    logps = (old + spread * torch.randn(rows, cols, generator=g, dtype=torch.float64)).clamp(max=0).float()
    teacher = (old + torch.randn(rows, cols, generator=g, dtype=torch.float64) * 2).clamp(max=0).float()
    mask = torch.ones(rows, cols, dtype=torch.long)
    mask[0, 6:] = 0  # a short completion: right padding
    mask[1, :] = 0  # an empty completion
    mask[3, 4:] = 0
    task = torch.randn(rows, generator=g).float()
    return logps.requires_grad_(), old.float(), teacher, mask, task


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_estimators_match_float64(seed, estimator):
    g = torch.Generator().manual_seed(seed)
    s = -torch.rand(400, generator=g) * 30
    q = -torch.rand(400, generator=g) * 30
    fast = kl_estimate(s, q, estimator, clamp=10.0)
    ref = torch.tensor(
        [kl_estimate_float64(float(a), float(b), estimator, 10.0) for a, b in zip(s, q, strict=True)],
        dtype=torch.float64,
    )
    assert torch.allclose(fast.double(), ref, rtol=1e-5, atol=1e-5)
    assert fast.abs().max() <= 10.0


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_k1_and_k3_are_unbiased_for_the_reverse_kl(seed, estimator):
    """Under the student's own distribution, E[k1] = E[k3] = KL(student || teacher) exactly."""
    g = torch.Generator().manual_seed(seed)
    log_s = torch.log_softmax(torch.randn(50, generator=g, dtype=torch.float64), -1)
    log_t = torch.log_softmax(torch.randn(50, generator=g, dtype=torch.float64), -1)
    exact = (log_s.exp() * (log_s - log_t)).sum()
    expected = (log_s.exp() * kl_estimate(log_s, log_t, estimator, clamp=100.0)).sum()
    assert torch.isclose(expected, exact, rtol=1e-9)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("dual_clip", [3.0, None])
@pytest.mark.parametrize("task_coef", [0.0, 0.7])
@pytest.mark.parametrize("advantage_from", ["current", "rollout"])
@pytest.mark.parametrize("proof_weight", [1.0, 2.5])
def test_loss_and_gradient_match_float64(seed, estimator, dual_clip, task_coef, advantage_from, proof_weight):
    logps, old, teacher, mask, task = inputs(seed)
    derivation = torch.rand(mask.shape, generator=torch.Generator().manual_seed(seed + 1)) < 0.5
    kwargs = dict(
        advantage_scale=torch.where(derivation, proof_weight, 1.0) if proof_weight != 1.0 else None,
        advantage_from=advantage_from,
        estimator=estimator,
        clamp=10.0,
        coef=1.3,
        task_advantages=task,
        task_coef=task_coef,
        eps_low=0.2,
        eps_high=0.28,
        dual_clip=dual_clip,
        normalizer=float(mask.sum()),
    )
    fast, _ = opd_loss(logps, old, teacher, mask, **kwargs)
    (fast_grad,) = torch.autograd.grad(fast, logps)
    ref_logps = logps.detach().double().requires_grad_()
    ref = opd_loss_float64(ref_logps, old, teacher, mask, **kwargs)
    (ref_grad,) = torch.autograd.grad(ref, ref_logps)
    assert math.isclose(fast.item(), ref.item(), rel_tol=1e-5, abs_tol=1e-6)
    assert torch.allclose(fast_grad.double(), ref_grad, rtol=1e-4, atol=1e-6)
    assert torch.all(fast_grad[mask == 0] == 0)  # prompt and padding tokens get no gradient


def test_the_advantage_source_matters_off_policy_only(seed):
    logps, old, teacher, mask, _ = inputs(seed)
    kwargs = dict(normalizer=float(mask.sum()), dual_clip=None)
    current, _ = opd_loss(logps, old, teacher, mask, advantage_from="current", **kwargs)
    rollout, _ = opd_loss(logps, old, teacher, mask, advantage_from="rollout", **kwargs)
    assert not math.isclose(current.item(), rollout.item(), rel_tol=1e-4)
    on_policy = logps.detach().clone()
    same = [
        opd_loss(on_policy, on_policy, teacher, mask, advantage_from=a, **kwargs)[0] for a in ("current", "rollout")
    ]
    assert torch.equal(same[0], same[1])
    with pytest.raises(ValueError, match="advantage_from must be one of current, rollout"):
        opd_loss(logps, old, teacher, mask, advantage_from="sampler")


def test_on_policy_gradient_is_the_negative_advantage_per_token(seed):
    """At ratio 1 nothing is clipped, and d loss / d log pi_t = -A_t / N."""
    logps, _, teacher, mask, _ = inputs(seed)
    old = logps.detach().clone()
    n = float(mask.sum())
    loss, stats = opd_loss(logps, old, teacher, mask, estimator="k1", normalizer=n)
    (grad,) = torch.autograd.grad(loss, logps)
    advantage = -(logps.detach() - teacher).clamp(-10, 10)
    assert torch.allclose(grad, (-advantage / n) * mask, atol=1e-7)
    assert stats["clipped_low"] == stats["clipped_high"] == stats["clipped_dual"] == 0


def test_clipping_and_dual_clip_cut_the_gradient():
    logps = torch.log(torch.tensor([[1.5, 0.5, 5.0]])).requires_grad_()
    old = torch.zeros(1, 3)
    mask = torch.ones(1, 3)
    # positive advantage, ratio 1.5 > 1.2: clipped, no gradient
    loss, stats = clipped_policy_loss(logps[:, :1], old[:, :1], torch.tensor([[1.0]]), mask[:, :1])
    assert torch.autograd.grad(loss, logps)[0][0, 0] == 0 and stats["clipped_high"] == 1
    # negative advantage, ratio 0.5 < 0.8: clipped low, no gradient
    loss, stats = clipped_policy_loss(logps[:, 1:2], old[:, 1:2], torch.tensor([[-1.0]]), mask[:, 1:2])
    assert torch.autograd.grad(loss, logps)[0][0, 1] == 0 and stats["clipped_low"] == 1
    # negative advantage, ratio 5 > dual clip 3: the loss is capped at 3|A|, no gradient
    loss, stats = clipped_policy_loss(logps[:, 2:], old[:, 2:], torch.tensor([[-1.0]]), mask[:, 2:], dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0) and stats["clipped_dual"] == 1
    assert torch.autograd.grad(loss, logps)[0][0, 2] == 0


def test_split_micro_batches_add_up_with_a_step_normaliser(seed):
    logps, old, teacher, mask, task = inputs(seed, rows=6)
    n = float(mask.sum())
    whole, _ = opd_loss(logps, old, teacher, mask, normalizer=n)
    parts = sum(opd_loss(logps[s], old[s], teacher[s], mask[s], normalizer=n)[0] for s in (slice(0, 2), slice(2, 6)))
    assert torch.isclose(whole, parts)


def test_token_log_probs_match_log_softmax(seed):
    g = torch.Generator().manual_seed(seed)
    hidden, weight = torch.randn(37, 8, generator=g), torch.randn(29, 8, generator=g)
    targets = torch.randint(0, 29, (37,), generator=g)
    scores = token_log_probs(hidden, weight, targets, topk=4, chunk_size=5)
    full = torch.log_softmax(hidden.double() @ weight.double().T, -1)
    assert torch.allclose(scores.logps.double(), full.gather(1, targets[:, None]).squeeze(1), atol=1e-5)
    top = full.topk(4, -1)
    assert torch.equal(scores.topk_ids, top.indices)
    assert torch.allclose(scores.topk_logps.double(), top.values, atol=1e-5)


def test_overlap_mass(seed):
    from proofkd.plugin.logprobs import TokenScores

    student = TokenScores(torch.zeros(1), torch.tensor([[3, 5, 7]]), torch.log(torch.tensor([[0.5, 0.3, 0.1]])))
    teacher = TokenScores(torch.zeros(1), torch.tensor([[5, 9, 3]]), torch.log(torch.tensor([[0.6, 0.2, 0.1]])))
    s_mass, t_mass = overlap_mass(student, teacher)
    assert s_mass.item() == pytest.approx(0.8) and t_mass.item() == pytest.approx(0.7)


def test_span_aware_opd_scales_the_derivation_tokens_gradient_only(seed):
    """On policy, d loss / d logp_t = -A_t / n: the derivation's tokens get w times theirs, the others the same."""
    logps, _, teacher, mask, _ = inputs(seed)
    derivation = torch.zeros_like(mask, dtype=torch.bool)
    derivation[:, :4] = True
    on_policy = logps.detach().clone()
    grads = []
    for scale in (None, torch.where(derivation, 2.5, 1.0)):
        current = on_policy.clone().requires_grad_()
        loss, _ = opd_loss(current, on_policy, teacher, mask, normalizer=7.0, advantage_scale=scale, dual_clip=None)
        grads.append(torch.autograd.grad(loss, current)[0])
    plain, scaled = grads
    on = mask.bool()
    assert torch.allclose(scaled[derivation & on], 2.5 * plain[derivation & on])
    assert torch.equal(scaled[~derivation & on], plain[~derivation & on])
