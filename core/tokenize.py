"""Tokenising rows of the published formats: ids, labels and (Stage 1) the derivation mask.

Shared by the Axolotl prompt strategies, the evaluator and the data builder,
so they always agree on tokens and on which of them are derivation tokens.
The whole rendered text is tokenised once (as a trainer fed the text would),
never prompt and response apart, so no merge is lost at the seam.
"""

from __future__ import annotations

from enum import IntEnum

from proofkd.core.templates import (
    FINAL_ANSWER_MARKER,
    PROOF_MARKER,
    RenderedText,
    render_stage1,
    render_stage2,
    token_span_mask,
)

STAGE1_COLUMNS = ("question", "CoT", "response")


class SpanStatus(IntEnum):
    """How much of a row's derivation made it into the training sequence."""

    WHOLE = 0
    TRUNCATED = 1
    NONE = 2


def _encode(tokenizer, rendered: RenderedText, sequence_len: int, train_on_inputs: bool):
    """ids, offsets, labels of a rendered text, cut to `sequence_len`; and whether it was cut."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"proofkd tokenisation needs a fast tokenizer (character offsets); {type(tokenizer).__name__} is not one"
        )
    encoded = tokenizer(rendered.text, return_offsets_mapping=True, add_special_tokens=True)
    ids = list(encoded["input_ids"])
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
        offsets.append((len(rendered.text), len(rendered.text)))
    cut = len(ids) > sequence_len
    ids, offsets = ids[:sequence_len], offsets[:sequence_len]
    labels = list(ids)
    if not train_on_inputs:
        labels = [-100 if a < rendered.prompt_end else token for token, (a, _) in zip(ids, offsets, strict=True)]
    return ids, offsets, labels, cut


def tokenize_stage1(
    tokenizer,
    question: str,
    cot: str,
    response: str,
    *,
    sequence_len: int,
    train_on_inputs: bool = True,
    start_marker: str = PROOF_MARKER,
    end_marker: str = FINAL_ANSWER_MARKER,
) -> dict:
    """`input_ids`, `attention_mask`, `labels`, `proof_mask`, `proofkd_span_status` of one row.

    The end-of-sequence token is appended when there is room. A sequence longer
    than `sequence_len` is cut to it; the derivation tokens left inside keep
    their mask, and the row is marked TRUNCATED. With `train_on_inputs=False`
    every token that starts before the derivation (instruction, problem,
    `Proof:`) gets label -100.
    """
    rendered = render_stage1(question, cot, response, start_marker=start_marker, end_marker=end_marker)
    ids, offsets, labels, cut = _encode(tokenizer, rendered, sequence_len, train_on_inputs)
    status = SpanStatus.NONE if rendered.span is None else SpanStatus.WHOLE
    if cut and status is SpanStatus.WHOLE and max((b for _, b in offsets), default=0) < rendered.span[1]:
        status = SpanStatus.TRUNCATED
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": labels,
        "proof_mask": token_span_mask(offsets, rendered.span),
        "proofkd_span_status": int(status),
    }


def stage2_instruction(instruction: str, extra_input: str = "") -> str:
    """Lawyer-Instruct's `input` is always empty; a non-empty one joins the instruction on a new line."""
    extra_input = (extra_input or "").strip()
    return f"{instruction}\n{extra_input}" if extra_input else instruction


def tokenize_stage2(
    tokenizer, instruction: str, extra_input: str, output: str, *, sequence_len: int, train_on_inputs: bool = True
) -> dict:
    """`input_ids`, `attention_mask`, `labels` of one row in the `### Instruction:` / `### Response:` format."""
    rendered = render_stage2(stage2_instruction(instruction, extra_input), output)
    ids, _, labels, _ = _encode(tokenizer, rendered, sequence_len, train_on_inputs)
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
