"""The derivation in the student's own samples: found by the Stage-1 markers across prompt and sample, an
unfinished one running to the sample's end, and mapped to the sampled tokens without re-tokenising."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from proofkd.core.templates import find_derivation_span, render_stage1_prompt
from proofkd.plugin.opd.spans import derivation_mask, derivation_token_range


def test_an_unfinished_sample_derives_to_its_end():
    assert find_derivation_span("Proof:\nso far", unfinished=True) == (6, 13)
    assert find_derivation_span("Proof:\nso far") is None
    assert find_derivation_span("no markers", unfinished=True) is None


def test_the_derivation_tokens_of_samples(smollm2):
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    prompt = render_stage1_prompt("What is 2 + 3?")  # ends with "Proof:\n": the sample starts deriving
    samples = [
        "Add the numbers: 2 + 3 = 5.\nFinal Answer:\n5",
        "Two plus three, step by step",  # cut off before Final Answer
        "Final Answer:\n5",  # no derivation at all
    ]
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in samples]
    first, end = derivation_token_range(tokenizer, prompt, encoded[0])
    assert tokenizer.decode(encoded[0][first:end]).strip() == "Add the numbers: 2 + 3 = 5."
    assert tokenizer.decode(encoded[0][end:]).startswith("Final Answer")
    assert derivation_token_range(tokenizer, prompt, encoded[1]) == (0, len(encoded[1]))

    width = max(map(len, encoded)) + 2
    completion = torch.zeros(len(samples), width, dtype=torch.long)
    completion_mask = torch.zeros_like(completion)
    for row, ids in enumerate(encoded):
        completion[row, : len(ids)] = torch.tensor(ids)
        completion_mask[row, : len(ids)] = 1
    prompt_ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]] * len(samples))
    mask = derivation_mask(tokenizer, prompt_ids, torch.ones_like(prompt_ids), completion, completion_mask)
    assert mask[0].sum() == end - first and mask[1].sum() == len(encoded[1]) and mask[2].sum() == 0
    assert not (mask & ~completion_mask.bool()).any()  # padding is never derivation
