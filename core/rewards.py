"""The rule-based math reward of DAPO: the last `Answer:` line against the ground truth, +1 or -1.

Shared by on-policy distillation (its optional task reward) and the
competition-math evaluation task, so training and evaluation score alike.

A response is right when the text after its last `Answer:` (case-insensitive,
to the end of that line) equals the ground truth after both are normalised:
TeX wrappers (`$...$`, `\\boxed{}`, `\\text{}`, `\\left`/`\\right`) and
trailing units or punctuation removed, `\\dfrac` read as `\\frac`, spaces and
thousands separators dropped, and numbers compared by value (`0.50` == `0.5`,
`1,000` == `1000`). A response with no `Answer:` line scores -1. This is the
strict string match of DAPO's reward, not a symbolic equivalence check.
"""

from __future__ import annotations

import re
from fractions import Fraction

_ANSWER = re.compile(r"(?im)answer\s*:\s*(.*)$")
_UNIT_WORDS = (
    "degrees",
    "degree",
    "units",
    "unit",
    "meters",
    "meter",
    "cm",
    "inches",
    "inch",
    "feet",
    "dollars",
    "cents",
    "square",
    "sq",
)


def last_answer(response: str) -> str | None:
    """The text after the last `Answer:` in `response` (to the end of its line), or None."""
    matches = _ANSWER.findall(response or "")
    return matches[-1].strip() if matches else None


def _strip_wrappers(text: str) -> str:
    text = text.strip()
    boxed = re.search(r"\\boxed\s*\{", text)
    if boxed:
        depth, start = 1, boxed.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                text = text[start:i]
                break
    text = text.strip().strip("$").strip()
    text = re.sub(r"\\text\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\(?:left|right)\b", "", text)
    return text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\!", "")


def normalize_answer(text: str) -> str:
    """The comparable form of an answer (see the module docstring)."""
    text = _strip_wrappers(text)
    text = text.rstrip(".").strip()
    words = text.split()
    while len(words) > 1 and words[-1].lower().strip(".") in _UNIT_WORDS:
        words.pop()
    text = "".join(words)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    number = _as_number(text)
    return str(number) if number is not None else text


def _as_number(text: str) -> Fraction | None:
    match = re.fullmatch(r"(-?\d+)/(\d+)|\\frac\{(-?\d+)\}\{(\d+)\}|(-?\d+(?:\.\d+)?)", text)
    if not match:
        return None
    try:
        if match.group(5) is not None:
            return Fraction(match.group(5))
        num, den = (match.group(1), match.group(2)) if match.group(1) is not None else (match.group(3), match.group(4))
        return Fraction(int(num), int(den))
    except (ValueError, ZeroDivisionError):
        return None


def dapo_reward(response: str, ground_truth: str) -> float:
    """+1.0 if the last `Answer:` of `response` matches `ground_truth`, else -1.0."""
    answer = last_answer(response)
    if answer is None:
        return -1.0
    return 1.0 if normalize_answer(answer) == normalize_answer(str(ground_truth)) else -1.0
