"""DAPO's rule-based reward and the arithmetic set in DAPO's schema."""

from __future__ import annotations

import re

import pytest

from proofkd.core.data import arith
from proofkd.core.rewards import dapo_reward, last_answer, normalize_answer


@pytest.mark.parametrize(
    "response, truth, reward",
    [
        ("Work it out.\nAnswer: 42", "42", 1.0),
        ("answer: $42$", "42", 1.0),
        ("Answer: \\boxed{\\frac{1}{2}}", "1/2", 1.0),
        ("Answer: 0.50", "1/2", 1.0),
        ("Answer: 1,000", "1000", 1.0),
        ("Answer: 12 degrees", "12", 1.0),
        ("Answer: x+1", "x + 1", 1.0),
        ("Answer: 3\nchecking...\nAnswer: 5", "5", 1.0),
        ("Answer: 41", "42", -1.0),
        ("The answer is 42", "42", -1.0),
        ("", "42", -1.0),
        ("Answer:", "42", -1.0),
        ("Answer: 3\nAnswer: 5", "3", -1.0),
    ],
)
def test_dapo_reward(response, truth, reward):
    assert dapo_reward(response, truth) == reward


def test_last_answer_reads_to_the_end_of_its_line():
    assert last_answer("x\nAnswer: 7 apples\nmore text") == "7 apples"
    assert last_answer("no line here") is None


def test_normalisation_keeps_distinct_values_distinct():
    assert normalize_answer("1/3") != normalize_answer("0.33")
    assert normalize_answer("-2") != normalize_answer("2")
    assert normalize_answer("\\dfrac{3}{4}") == normalize_answer("0.75")


def test_arith_rows_have_dapo_schema_and_right_answers():
    rows = arith.generate("train", 60, seed=3)
    assert len({r["prompt"][0]["content"] for r in rows}) == 60
    for row in rows:
        assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
        content = row["prompt"][0]["content"]
        assert content.startswith("Solve the following math problem step by step.")
        problem = content.split("\n\n")[1]
        numbers = [int(n) for n in re.findall(r"\d+", problem)]
        answer = int(row["reward_model"]["ground_truth"])
        if problem.startswith("What is ("):
            assert answer == (numbers[0] + numbers[1]) * numbers[2]
        elif problem.startswith("What is"):
            assert answer == numbers[0] + numbers[1] * numbers[2]
        elif "apples" in problem:
            assert answer == numbers[0] * numbers[1]
        else:
            assert answer == numbers[0] - numbers[1]


def test_arith_splits_are_disjoint():
    train = {r["prompt"][0]["content"] for r in arith.generate("train", 100, seed=1)}
    heldout = {r["prompt"][0]["content"] for r in arith.generate("heldout", 20, seed=1)}
    assert not train & heldout
