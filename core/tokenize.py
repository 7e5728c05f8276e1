"""Tokenising a Stage-1 row: ids, labels and the per-token derivation mask.

Shared by the Axolotl prompt strategy, the evaluator and the data builder,
so the three always agree on which tokens are derivation tokens.
"""

from __future__ import annotations

from enum import IntEnum

from proofkd.templates import FINAL_ANSWER_MARKER, PROOF_MARKER, render_stage1, token_span_mask

STAGE1_COLUMNS = ("question", "CoT", "response")


class SpanStatus(IntEnum):
    """How much of a row's derivation made it into the training sequence."""

    WHOLE = 0
    TRUNCATED = 1
    NONE = 2


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
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"Stage-1 tokenisation needs a fast tokenizer (character offsets); {type(tokenizer).__name__} is not one"
        )
    rendered = render_stage1(question, cot, response, start_marker=start_marker, end_marker=end_marker)
    encoded = tokenizer(rendered.text, return_offsets_mapping=True, add_special_tokens=True)
    ids = list(encoded["input_ids"])
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
        offsets.append((len(rendered.text), len(rendered.text)))

    status = SpanStatus.NONE if rendered.span is None else SpanStatus.WHOLE
    if len(ids) > sequence_len:
        ids, offsets = ids[:sequence_len], offsets[:sequence_len]
        kept_until = max((b for _, b in offsets), default=0)
        if status is SpanStatus.WHOLE and kept_until < rendered.span[1]:
            status = SpanStatus.TRUNCATED

    labels = list(ids)
    if not train_on_inputs:
        labels = [-100 if a < rendered.prompt_end else token for token, (a, _) in zip(ids, offsets, strict=True)]
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": labels,
        "proof_mask": token_span_mask(offsets, rendered.span),
        "proofkd_span_status": int(status),
    }
