"""How far a student is from its teacher on its own samples: the reverse KL that OPD minimises.

For each held-out prompt the student samples a completion (in seeded
batches, at temperature 1, so before and after are measured on the same
footing; prompts are left-padded, a completion ends at its first
end-of-sequence token); along
it, at every completion position, the exact KL(student || teacher) over the
whole vocabulary is computed in float64 from both models' logits, and the
mean over tokens is reported, with the mean k1 of the sampled tokens (its
unbiased one-sample estimate) and the DAPO reward of the completions. The
vocabulary is the rows both models have, as in training
(`proofkd.plugin.teacher.shared_vocab_rows`).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from proofkd.core.rewards import dapo_reward
from proofkd.plugin.heads import output_head
from proofkd.plugin.teacher import shared_vocab_rows


@torch.no_grad()
def reverse_kl_on_prompts(
    student,
    teacher,
    tokenizer,
    rows: list[dict],
    *,
    max_new_tokens: int = 48,
    seed: int = 0,
    batch_size: int = 8,
    chat_template_kwargs: dict | None = None,
    progress: bool = True,
    desc: str = "held-out prompts",
) -> dict[str, float]:
    """Mean exact reverse KL per completion token, mean k1, mean length and reward, over `rows` ({prompt, answer})."""
    student.eval()
    teacher.eval()
    vocab = shared_vocab_rows(
        len(tokenizer), output_head(student).weight.shape[0], output_head(teacher).weight.shape[0]
    )
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = student.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    kl_sum, k1_sum, tokens, reward_sum = 0.0, 0.0, 0, 0.0
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    try:
        for index, batch in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False)):
            texts = [
                tokenizer.apply_chat_template(
                    row["prompt"], add_generation_prompt=True, tokenize=False, **(chat_template_kwargs or {})
                )
                for row in batch
            ]
            prompt = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            torch.manual_seed(seed + index)
            out = student.generate(
                **prompt,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
            )
            start = prompt["input_ids"].shape[1]
            completion = out[:, start:]
            # A completion is real up to and including its first end-of-sequence token.
            ended = torch.zeros_like(completion, dtype=torch.bool)
            for token in eos:
                ended |= completion == token
            after_end = (ended.long().cumsum(-1) - ended.long()) > 0
            on = ~after_end
            mask = torch.cat([prompt["attention_mask"], on.long()], dim=1)
            log_s = torch.log_softmax(student(out, attention_mask=mask).logits[:, start - 1 : -1, :vocab].double(), -1)
            log_t = torch.log_softmax(teacher(out, attention_mask=mask).logits[:, start - 1 : -1, :vocab].double(), -1)
            kl = (log_s.exp() * (log_s - log_t)).sum(-1)
            picked = completion[..., None]
            k1 = (log_s.gather(-1, picked) - log_t.gather(-1, picked)).squeeze(-1)
            kl_sum += float(kl[on].sum())
            k1_sum += float(k1[on].sum())
            tokens += int(on.sum())
            for row, ids, real in zip(batch, completion, on, strict=True):
                reward_sum += dapo_reward(tokenizer.decode(ids[real], skip_special_tokens=True), row["answer"])
    finally:
        tokenizer.padding_side = side
    n = max(tokens, 1)
    return {
        "reverse_kl": kl_sum / n,
        "k1": k1_sum / n,
        "mean_length": tokens / max(len(rows), 1),
        "reward": reward_sum / max(len(rows), 1),
        "tokens": tokens,
    }
