"""Prompt templates of the published recipes, and where the derivation sits in them.

The Stage-1 text is

    Solve the following problem carefully and show a rigorous derivation.
    Problem:
    {question}
    Proof:
    {CoT}
    Final Answer:
    {response}

The *derivation span* is the character range that starts right after the
`Proof:` marker and ends where the `Final Answer:` marker begins (so it holds
the newline after `Proof:`, the chain of thought, and the newline before
`Final Answer:`; the markers themselves are outside it). Rendering knows the
span exactly, so a `Proof:` inside a question or a `Final Answer:` inside a
chain of thought cannot move it.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGE1_INSTRUCTION = "Solve the following problem carefully and show a rigorous derivation."
PROOF_MARKER = "Proof:"
FINAL_ANSWER_MARKER = "Final Answer:"

STAGE2_INSTRUCTION_HEADER = "### Instruction:"
STAGE2_RESPONSE_HEADER = "### Response:"


@dataclass(frozen=True)
class RenderedText:
    """A rendered training text and the character range of its derivation.

    `span` is `(start, end)` with `start <= end`, or None when the row has no
    derivation (an empty chain of thought). `prompt_end` is where the part a
    model is asked to continue begins (everything before it is the prompt).
    """

    text: str
    span: tuple[int, int] | None
    prompt_end: int


def render_stage1(
    question: str,
    cot: str,
    response: str,
    *,
    start_marker: str = PROOF_MARKER,
    end_marker: str = FINAL_ANSWER_MARKER,
) -> RenderedText:
    """Render one (question, CoT, response) row in the Stage-1 template."""
    head = f"{STAGE1_INSTRUCTION}\nProblem:\n{question}\n{start_marker}"
    span_start = len(head)
    body = f"\n{cot}\n"
    span_end = span_start + len(body)
    text = f"{head}{body}{end_marker}\n{response}"
    span = (span_start, span_end) if cot.strip() else None
    return RenderedText(text=text, span=span, prompt_end=span_start)


def render_stage1_prompt(question: str, *, start_marker: str = PROOF_MARKER) -> str:
    """The Stage-1 prompt a model continues at inference: everything up to the derivation."""
    return f"{STAGE1_INSTRUCTION}\nProblem:\n{question}\n{start_marker}\n"


def find_derivation_span(
    text: str,
    start_marker: str = PROOF_MARKER,
    end_marker: str = FINAL_ANSWER_MARKER,
    *,
    unfinished: bool = False,
) -> tuple[int, int] | None:
    """Locate the derivation in an already rendered text.

    The span runs from the `start_marker` closest before the last
    `end_marker` up to that `end_marker`, so a marker quoted in the question
    (before the real `Proof:`) does not move it. Returns None when either
    marker is missing. With `unfinished` (a model's sample, which may stop
    mid-derivation), a text without `end_marker` has its derivation run from
    the last `start_marker` to its end. For rows rendered by `render_stage1`,
    prefer its exact span.
    """
    end_at = text.rfind(end_marker)
    if end_at < 0 and unfinished:
        start_at = text.rfind(start_marker)
        return None if start_at < 0 else (start_at + len(start_marker), len(text))
    if end_at < 0:
        return None
    start_at = text.rfind(start_marker, 0, end_at)
    if start_at < 0:
        return None
    return start_at + len(start_marker), end_at


def token_span_mask(offsets: list[tuple[int, int]], span: tuple[int, int] | None) -> list[int]:
    """1 for each token that begins inside the character span, else 0.

    A token belongs to the derivation when its first character lies in
    `[start, end)`; tokens with an empty range (special tokens the tokenizer
    adds, offset `(0, 0)` or `(n, n)`) never do.
    """
    if span is None:
        return [0] * len(offsets)
    start, end = span
    return [1 if (b > a and start <= a < end) else 0 for a, b in offsets]


def render_stage2(instruction: str, output: str) -> RenderedText:
    """Render one legal instruction row in the Stage-2 format."""
    prompt = f"{STAGE2_INSTRUCTION_HEADER}\n{instruction}\n{STAGE2_RESPONSE_HEADER}\n"
    return RenderedText(text=prompt + output, span=None, prompt_end=len(prompt))


DAPO_INSTRUCTION = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem."
)
DAPO_REMINDER = 'Remember to put your answer on its own line after "Answer:".'


def render_dapo_prompt(problem: str) -> str:
    """The user message of a DAPO-Math-17k row for `problem`."""
    return f"{DAPO_INSTRUCTION}\n\n{problem}\n\n{DAPO_REMINDER}"
