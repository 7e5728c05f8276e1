"""Per-sample scorers of the proofkd lm-eval tasks.

lm-eval hands each task's `process_results(doc, results)` the model's
generation; the `utils.py` beside each task YAML forwards to these functions,
which hold the scoring rules and are tested without a model:

- STEM in the Stage-1 format: the answer is the text after the *last* "Final
  Answer:" (any case), up to the first blank line; it is checked against the
  reference with math-verify. `format` asks for a derivation and an answer;
  `derivation_words` counts the words before the marker (the whole generation
  when the marker never comes, since the model was still deriving).
- Legal free text: ROUGE-L F1 against the reference, and the fraction of the
  item's key terms the answer uses, matched on Porter stems (so "negligent"
  finds "negligence") or on variants listed as `term|variant`. The tasks
  leave out terms the question already uses (`proofkd.evals.data`).
- Competition math: DAPO's own reward (`proofkd.core.rewards`), so evaluation and
  on-policy training judge answers alike.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import cache

from proofkd.core.rewards import dapo_reward, last_answer

FINAL_ANSWER = re.compile(r"final\s+answer\s*:", re.IGNORECASE)
_BLANK_LINE = re.compile(r"\n\s*\n")
_TEX_DELIMITERS = ("$", "\\(", "\\[", "\\boxed")
# A value, a space, then a unit made of letters, `/`, `*`, `.`, `-` and exponents ("12 m/s^2", "7/3 J.").
_UNIT_TAIL = re.compile(r"^(?P<value>.*?\d\$?)\s+(?:[A-Za-z°Ω][A-Za-z°Ω/*·.\- ]*|\^\{?-?\d+\}?)+$")


@dataclass(frozen=True)
class Stage1Output:
    """A Stage-1 generation cut at its last "Final Answer:" marker; `answer` is None without one."""

    derivation: str
    answer: str | None


def split_stage1_output(generation: str) -> Stage1Output:
    """The derivation and the final answer of a generation that continues a Stage-1 prompt."""
    markers = list(FINAL_ANSWER.finditer(generation))
    if not markers:
        return Stage1Output(derivation=generation.strip(), answer=None)
    last = markers[-1]
    # Markdown emphasis around the marker ("**Final Answer:**") belongs to neither part.
    derivation = generation[: last.start()].strip().rstrip("*").strip()
    tail = generation[last.end() :].lstrip("* \t\n")
    answer = _BLANK_LINE.split(tail, maxsplit=1)[0].strip()
    return Stage1Output(derivation=derivation, answer=answer)


def with_tex_delimiters(text: str) -> str:
    """`text` as math-verify reads expressions: inside `$...$` unless it already has delimiters."""
    return text if any(d in text for d in _TEX_DELIMITERS) else f"${text}$"


def _timeout() -> int | None:
    # math-verify bounds parsing and checking with SIGALRM, which only the main thread may set;
    # lm-eval scores in the main thread, anything else runs unbounded rather than failing.
    return 5 if threading.current_thread() is threading.main_thread() else None


def math_equivalent(prediction: str, reference: str) -> bool:
    """Whether `prediction` states the value of `reference` (math-verify, reference first).

    When the reference is a plain number, a prediction that is that number
    followed by a unit ("12 J") counts too: wrapped in `$...$` the unit would
    multiply the number.
    """
    from math_verify import parse, verify
    from sympy import Number

    timeout = _timeout()
    gold = parse(with_tex_delimiters(reference), parsing_timeout=timeout) or parse(reference, parsing_timeout=timeout)
    if not gold or not prediction.strip():
        return False
    wrapped = parse(with_tex_delimiters(prediction), parsing_timeout=timeout)
    if verify(gold, wrapped, timeout_seconds=timeout):
        return True
    unit = _UNIT_TAIL.match(prediction.strip())
    if unit and isinstance(gold[0], Number):
        value = parse(with_tex_delimiters(unit.group("value")), parsing_timeout=timeout)
        return verify(gold, value, timeout_seconds=timeout)
    return False


def stem_scores(generation: str, reference: str) -> dict[str, float]:
    """`correct`, `format` and `derivation_words` of one Stage-1 generation."""
    output = split_stage1_output(generation)
    answered = bool(output.answer)
    correct = answered and math_equivalent(output.answer, reference)
    return {
        "correct": float(correct),
        "format": float(answered and bool(output.derivation)),
        "derivation_words": float(len(output.derivation.split())),
    }


@cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


@cache
def _stemming_tokenizer():
    from rouge_score.tokenizers import DefaultTokenizer

    return DefaultTokenizer(use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 of `prediction` against `reference`, on stemmed lower-case words."""
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


def _stems(text: str) -> list[str]:
    return _stemming_tokenizer().tokenize(text)


def _contains(tokens: list[str], phrase: list[str]) -> bool:
    width = len(phrase)
    return width > 0 and any(tokens[i : i + width] == phrase for i in range(len(tokens) - width + 1))


def term_coverage(answer: str, terms: list[str]) -> float:
    """The fraction of `terms` that `answer` uses; a term is `phrase` or `phrase|variant|...`."""
    if not terms:
        raise ValueError("term_coverage needs at least one key term; items without terms should not report it")
    tokens = _stems(answer)
    found = sum(any(_contains(tokens, _stems(variant)) for variant in term.split("|")) for term in terms)
    return found / len(terms)


def legal_scores(answer: str, reference: str, terms: list[str] | None = None) -> dict[str, float]:
    """`rougeL` and `answered` of one free-text legal answer, plus `term_coverage` when `terms` are given."""
    scores = {"rougeL": rouge_l(answer, reference), "answered": float(bool(answer.strip()))}
    if terms:
        scores["term_coverage"] = term_coverage(answer, terms)
    return scores


def dapo_scores(response: str, ground_truth: str) -> dict[str, float]:
    """`accuracy` (DAPO's reward is +1) and `answer_line` (the response has an `Answer:` line)."""
    return {
        "accuracy": float(dapo_reward(response, ground_truth) == 1.0),
        "answer_line": float(last_answer(response) is not None),
    }
