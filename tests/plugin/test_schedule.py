"""The proof weight's schedule: endpoints on the first and last optimizer step, shape in between."""

from __future__ import annotations

import math

import pytest

from proofkd.plugin.schedule import proof_weight_at, schedule_progress


def test_linear_runs_from_start_to_end_over_the_run():
    total = 728  # 5,815 rows / 8 per step, as the published Stage 1
    weights = [proof_weight_at(s, total, 2.5, 1.5, "linear") for s in range(total)]
    assert weights[0] == 2.5 and weights[-1] == 1.5
    assert math.isclose(weights[(total - 1) // 2], 2.0, abs_tol=1.0 / total)
    assert all(a > b for a, b in zip(weights, weights[1:], strict=False))
    steps = [a - b for a, b in zip(weights, weights[1:], strict=False)]
    assert max(steps) - min(steps) < 1e-12  # linear: equal decrements


def test_cosine_and_constant():
    assert proof_weight_at(0, 11, 2.5, 1.5, "cosine") == 2.5
    assert math.isclose(proof_weight_at(5, 11, 2.5, 1.5, "cosine"), 2.0)
    assert math.isclose(proof_weight_at(10, 11, 2.5, 1.5, "cosine"), 1.5)
    assert proof_weight_at(7, 11, 2.5, 1.5, "constant") == 2.5


def test_progress_is_clamped_and_defined_for_one_step_runs():
    assert schedule_progress(0, 1) == 0.0
    assert schedule_progress(50, 10) == 1.0
    assert proof_weight_at(99, 10, 2.5, 1.5) == 1.5


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown proof weight schedule"):
        proof_weight_at(0, 10, 2.5, 1.5, "step")
