"""Stage-1 tokenisation: the derivation mask follows the tokenizer's offsets, on a real tokenizer too."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from proofkd.core.data.stem import generate
from proofkd.core.templates import render_stage1
from proofkd.core.tokenize import SpanStatus, tokenize_stage1


@pytest.fixture(scope="module")
def tokenizers(tiny, smollm2):
    return {
        "tiny-bpe": AutoTokenizer.from_pretrained(tiny["tokenizer"]),
        "smollm2": AutoTokenizer.from_pretrained(smollm2),
    }


@pytest.fixture(params=["tiny-bpe", "smollm2"])
def tokenizer(request, tokenizers):
    return tokenizers[request.param]


def masked_text(tokenizer, encoded):
    ids = [t for t, m in zip(encoded["input_ids"], encoded["proof_mask"], strict=True) if m]
    return tokenizer.decode(ids)


def test_mask_covers_the_derivation_and_nothing_else(tokenizer):
    for row in generate("train", 20, seed=11):
        encoded = tokenize_stage1(tokenizer, row["question"], row["CoT"], row["response"], sequence_len=1024)
        assert encoded["proofkd_span_status"] == SpanStatus.WHOLE
        derivation = masked_text(tokenizer, encoded)
        # The masked tokens spell the chain of thought (with the newlines around it, as merges allow).
        assert row["CoT"] in derivation
        assert "Proof:" not in derivation and "Final Answer" not in derivation
        assert len(derivation) <= len(row["CoT"]) + 3


def test_eos_is_appended_and_labels_cover_everything_by_default(tokenizer):
    row = generate("train", 1, seed=5)[0]
    encoded = tokenize_stage1(tokenizer, row["question"], row["CoT"], row["response"], sequence_len=1024)
    assert encoded["input_ids"][-1] == tokenizer.eos_token_id
    assert encoded["labels"] == encoded["input_ids"]
    assert encoded["attention_mask"] == [1] * len(encoded["input_ids"])


def test_train_on_inputs_false_masks_the_prompt_through_proof(tokenizer):
    row = generate("train", 1, seed=6)[0]
    encoded = tokenize_stage1(
        tokenizer, row["question"], row["CoT"], row["response"], sequence_len=1024, train_on_inputs=False
    )
    prompt_ids = [t for t, lab in zip(encoded["input_ids"], encoded["labels"], strict=True) if lab == -100]
    prompt = tokenizer.decode(prompt_ids)
    assert prompt.endswith("Proof:") and row["question"] in prompt
    first_trained = next(i for i, lab in enumerate(encoded["labels"]) if lab != -100)
    assert encoded["proof_mask"][first_trained] == 1


def test_truncated_derivation_keeps_the_part_inside_the_window(tokenizer):
    row = generate("train", 1, seed=8)[0]
    full = tokenize_stage1(tokenizer, row["question"], row["CoT"], row["response"], sequence_len=4096)
    first = full["proof_mask"].index(1)
    cut = first + 5
    encoded = tokenize_stage1(tokenizer, row["question"], row["CoT"], row["response"], sequence_len=cut)
    assert encoded["proofkd_span_status"] == SpanStatus.TRUNCATED
    assert len(encoded["input_ids"]) == cut
    assert encoded["proof_mask"] == full["proof_mask"][:cut]
    assert sum(encoded["proof_mask"]) == 5


def test_cut_before_the_derivation_is_truncated_with_no_weighted_tokens(tokenizer):
    row = generate("train", 1, seed=8)[0]
    encoded = tokenize_stage1(tokenizer, row["question"], row["CoT"], row["response"], sequence_len=8)
    assert encoded["proofkd_span_status"] == SpanStatus.TRUNCATED
    assert sum(encoded["proof_mask"]) == 0


def test_cut_after_the_derivation_stays_whole(tokenizer):
    row = generate("train", 1, seed=9)[0]
    full = tokenize_stage1(tokenizer, row["question"], row["CoT"], row["response"], sequence_len=4096)
    encoded = tokenize_stage1(
        tokenizer, row["question"], row["CoT"], row["response"], sequence_len=len(full["input_ids"]) - 1
    )
    assert encoded["proofkd_span_status"] == SpanStatus.WHOLE
    assert encoded["input_ids"][-1] != tokenizer.eos_token_id


def test_row_without_derivation_weighs_one_everywhere(tokenizer):
    encoded = tokenize_stage1(tokenizer, "What is 1+1?", "", "2", sequence_len=1024)
    assert encoded["proofkd_span_status"] == SpanStatus.NONE
    assert sum(encoded["proof_mask"]) == 0


def test_custom_markers_move_the_mask(tokenizer):
    row = generate("train", 1, seed=12)[0]
    encoded = tokenize_stage1(
        tokenizer,
        row["question"],
        row["CoT"],
        row["response"],
        sequence_len=1024,
        start_marker="Derivation:",
        end_marker="Result:",
    )
    text = tokenizer.decode(encoded["input_ids"])
    assert "Derivation:" in text and "Result:" in text
    assert row["CoT"] in masked_text(tokenizer, encoded)


def test_mask_matches_character_offsets_exactly(tokenizer):
    row = generate("train", 1, seed=13)[0]
    rendered = render_stage1(row["question"], row["CoT"], row["response"])
    offsets = tokenizer(rendered.text, return_offsets_mapping=True)["offset_mapping"]
    encoded = tokenize_stage1(tokenizer, row["question"], row["CoT"], row["response"], sequence_len=1024)
    start, end = rendered.span
    expected = [int(b > a and start <= a < end) for a, b in offsets]
    assert encoded["proof_mask"][: len(expected)] == expected


def test_slow_tokenizer_is_refused():
    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="fast tokenizer"):
        tokenize_stage1(Slow(), "q", "c", "r", sequence_len=16)
