"""Where the derivation lies in the student's own samples, token by token.

A sample continues its prompt; the derivation is found in prompt + sample by
the Stage-1 markers (`proofkd.core.templates.find_derivation_span`, a sample
cut off before `Final Answer:` deriving to its end). The sampled tokens are
not re-tokenised: a token belongs to the derivation when the text decoded up
to it ends at or after the derivation's start and before its end. That text
only grows token by token, so two binary searches over prefix decodes find
the range (about 2 log2 L decodes per sample, not L).
"""

from __future__ import annotations

import torch

from proofkd.core.templates import find_derivation_span


def derivation_token_range(tokenizer, prompt: str, ids: list[int]) -> tuple[int, int]:
    """The sampled tokens `[first, end)` that begin inside the derivation of `prompt` + the sample."""
    text = prompt + tokenizer.decode(ids, skip_special_tokens=False)
    span = find_derivation_span(text, unfinished=True)
    if span is None:
        return 0, 0
    start, end = (max(0, point - len(prompt)) for point in span)

    def first_token_at_or_after(char: int) -> int:
        """The first token whose text begins at or after `char` of the sample."""
        low, high = 0, len(ids)
        while low < high:
            middle = (low + high) // 2
            if len(tokenizer.decode(ids[:middle], skip_special_tokens=False)) >= char:
                high = middle
            else:
                low = middle + 1
        return low

    return first_token_at_or_after(start), first_token_at_or_after(end)


def derivation_mask(tokenizer, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """`[samples, completion tokens]` True on the derivation tokens of each sample (see the module docstring)."""
    mask = torch.zeros_like(completion_mask, dtype=torch.bool)
    for row in range(completion_ids.shape[0]):
        prompt = tokenizer.decode(prompt_ids[row][prompt_mask[row].bool()].tolist(), skip_special_tokens=False)
        ids = completion_ids[row][completion_mask[row].bool()].tolist()
        first, end = derivation_token_range(tokenizer, prompt, ids)
        mask[row, first:end] = True
    return mask & completion_mask.bool()
