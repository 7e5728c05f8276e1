"""The per-sample scorers of the evaluation tasks, on hand-made right and wrong answers."""

from __future__ import annotations

import json
import random
import re

import pytest

from proofkd.core.data import stem
from proofkd.evals import TASKS_DIR
from proofkd.evals.scoring import (
    dapo_scores,
    legal_scores,
    math_equivalent,
    rouge_l,
    split_stage1_output,
    stem_scores,
    term_coverage,
)

DERIVATION = "Multiply both sides by 2.\nThen divide by 4, which leaves the value below."


def stage1(answer: str, marker: str = "Final Answer:") -> str:
    return f"{DERIVATION}\n{marker}\n{answer}"


@pytest.mark.parametrize("form", ["1/2", "0.5", "\\frac{1}{2}", "$\\frac{1}{2}$", "\\boxed{\\frac{1}{2}}", "0.50"])
def test_equivalent_forms_of_a_half_are_correct(form):
    assert stem_scores(stage1(form), "1/2") == {
        "correct": 1.0,
        "format": 1.0,
        "derivation_words": float(len(DERIVATION.split())),
    }


@pytest.mark.parametrize("wrong", ["1/3", "2", "-1/2", "0.51", "\\frac{2}{3}"])
def test_a_wrong_value_scores_zero_but_keeps_its_format(wrong):
    scores = stem_scores(stage1(wrong), "1/2")
    assert scores["correct"] == 0.0
    assert scores["format"] == 1.0


def test_a_response_without_final_answer_has_no_format_and_no_credit():
    generation = f"{DERIVATION}\nso the value is 1/2"
    scores = stem_scores(generation, "1/2")
    assert scores["correct"] == 0.0 and scores["format"] == 0.0
    # The model never left its derivation, so all of it counts as derivation.
    assert scores["derivation_words"] == len(generation.split())


@pytest.mark.parametrize(
    "marker", ["final answer:", "FINAL ANSWER:", "Final answer:", "**Final Answer:**", "Final  Answer :"]
)
def test_the_marker_is_found_in_any_case(marker):
    assert split_stage1_output(stage1("7/3", marker)).answer == "7/3"
    assert stem_scores(stage1("7/3", marker), "7/3")["correct"] == 1.0


def test_the_last_marker_wins_and_the_answer_ends_at_a_blank_line():
    generation = "Final Answer: 3 was a guess.\nRecheck: 2 * 4 = 8.\nFinal Answer:\n8\n\nProblem solved, moving on: 9"
    output = split_stage1_output(generation)
    assert output.answer == "8"
    assert output.derivation.endswith("2 * 4 = 8.")
    assert stem_scores(generation, "8")["correct"] == 1.0


def test_an_answer_without_a_derivation_is_correct_but_badly_formatted():
    assert stem_scores("Final Answer:\n12", "12") == {"correct": 1.0, "format": 0.0, "derivation_words": 0.0}
    assert stem_scores(stage1(""), "12")["format"] == 0.0


GOLD_ODE = "y = C_1 e^{-5x} + C_2 e^{2x}"


@pytest.mark.parametrize(
    "prediction", ["y = C_2 e^{2x} + C_1 e^{-5x}", "$y = C_1 e^{-5x} + C_2 e^{2x}$", "C_1 e^{-5x} + C_2 e^{2x}"]
)
def test_ode_solutions_match_in_any_order(prediction):
    assert math_equivalent(prediction, GOLD_ODE)


@pytest.mark.parametrize(
    "prediction", ["y = C_1 e^{5x} + C_2 e^{2x}", "y = C_1 e^{-5x} + C_2 e^{3x}", "y = C_1 e^{-5x}"]
)
def test_ode_solutions_with_a_wrong_exponent_fail(prediction):
    assert not math_equivalent(prediction, GOLD_ODE)


@pytest.mark.parametrize(
    ("prediction", "right"), [("12 J", True), ("12 m/s^2", True), ("13 J", False), ("x = 12 m", True)]
)
def test_a_number_with_a_unit_is_read_as_the_number(prediction, right):
    assert math_equivalent(prediction, "12") is right


def test_an_expression_that_starts_with_the_number_is_not_the_number():
    assert not math_equivalent("4e^{5x}", "4")
    assert not math_equivalent("5 or 7", "5")


def test_eigenvalue_pairs_match_as_sets():
    assert math_equivalent("lambda = 5, -3", "-3, 5")
    assert not math_equivalent("-3", "-3, 5")


def test_every_generated_problem_is_correct_when_answered_as_in_training(seed):
    """The training targets (derivation, then the response with its units) score as correct."""
    for row in stem.generate("heldout", 30, seed=seed):
        generation = f"{row['CoT']}\nFinal Answer:\n{row['response']}"
        assert stem_scores(generation, row["answer"])["correct"] == 1.0, row


def test_generated_numeric_answers_off_by_one_are_wrong(seed):
    numeric = [r for r in stem.generate("heldout", 60, seed=seed) if re.fullmatch(r"-?\d+", r["answer"])]
    assert numeric
    for row in numeric:
        assert stem_scores(stage1(str(int(row["answer"]) + 1)), row["answer"])["correct"] == 0.0, row


REFERENCE = (
    "Negligence requires a duty of care, a breach of that duty, causation and damages. "
    "Proximate cause limits liability to foreseeable harms."
)
TERMS = ["negligence", "duty", "proximate cause", "liability|liable", "foreseeable|foreseeability"]


def test_term_coverage_matches_word_forms_and_variants():
    answer = "The defendant was negligent: he owed a duty, and he is liable because the harm was foreseeable."
    # negligent ~ negligence (stem), duty, liable (variant), foreseeable; "proximate cause" is missing.
    assert term_coverage(answer, TERMS) == pytest.approx(4 / 5)
    assert term_coverage(REFERENCE, TERMS) == 1.0


def test_term_coverage_needs_whole_phrases_and_terms():
    assert term_coverage("The cause was proximate.", ["proximate cause"]) == 0.0
    assert term_coverage("It was the proximate cause.", ["proximate cause"]) == 1.0
    with pytest.raises(ValueError, match="key term"):
        term_coverage("anything", [])


def test_rouge_l_rewards_the_reference_and_not_an_unrelated_answer():
    assert rouge_l(REFERENCE, REFERENCE) == pytest.approx(1.0)
    unrelated = "A contract needs an offer, an acceptance and consideration to be enforceable."
    close = "Negligence requires a duty of care, its breach, causation and damages."
    assert rouge_l(unrelated, REFERENCE) < 0.2 < rouge_l(close, REFERENCE)


def test_legal_scores_report_term_coverage_only_when_terms_exist():
    right = legal_scores(REFERENCE, REFERENCE, TERMS)
    assert right == {"rougeL": pytest.approx(1.0), "answered": 1.0, "term_coverage": 1.0}
    wrong = legal_scores("I cannot say.", REFERENCE, TERMS)
    assert wrong["term_coverage"] == 0.0 and wrong["rougeL"] < 0.1
    assert set(legal_scores("An answer.", REFERENCE)) == {"rougeL", "answered"}
    assert legal_scores("  \n", REFERENCE)["answered"] == 0.0


def test_each_legal_reference_answer_uses_all_of_its_key_terms():
    """The key terms are matchable: the reference answer written with them finds every one."""
    rows = [json.loads(line) for line in (TASKS_DIR / "legal" / "legal_qa.jsonl").read_text().splitlines()]
    for row in rows:
        assert 3 <= len(row["terms"]) <= 6, row["id"]
        assert term_coverage(row["reference"], row["terms"]) == 1.0, row["id"]


def test_term_coverage_of_another_items_reference_is_low():
    rows = [json.loads(line) for line in (TASKS_DIR / "legal" / "legal_qa.jsonl").read_text().splitlines()]
    shuffled = rows[1:] + rows[:1]
    mean = sum(term_coverage(other["reference"], row["terms"]) for row, other in zip(rows, shuffled, strict=True))
    assert mean / len(rows) < 0.35


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("2^3 = 8, so the remainder is 16.\nAnswer: 16", {"accuracy": 1.0, "answer_line": 1.0}),
        ("Work.\nAnswer: $16$", {"accuracy": 1.0, "answer_line": 1.0}),
        ("Answer: 15\nOn reflection:\nAnswer: 16", {"accuracy": 1.0, "answer_line": 1.0}),
        ("Work.\nAnswer: 17", {"accuracy": 0.0, "answer_line": 1.0}),
        ("The remainder is 16.", {"accuracy": 0.0, "answer_line": 0.0}),
    ],
)
def test_dapo_scores_follow_the_reward(response, expected):
    assert dapo_scores(response, "16") == expected


def test_dapo_scores_on_random_integers(seed):
    rng = random.Random(seed)
    for _ in range(20):
        value = rng.randint(-10_000, 10_000)
        assert dapo_scores(f"Steps.\nAnswer: {value}", str(value))["accuracy"] == 1.0
        assert dapo_scores(f"Steps.\nAnswer: {value + rng.randint(1, 9)}", str(value))["accuracy"] == 0.0
