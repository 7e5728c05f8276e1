"""How close a student is to its teacher on held-out Stage-1 rows.

Independent of the training loop on purpose: it tokenises rows the way the
strategy does, runs both models one row at a time, and scores them with the
float64 reference loss, so the quickstart's before/after figures do not rely
on the code they check. Only the compatibility rule is the training's
(`proofkd.plugin.teacher.shared_vocab_rows`): the KL runs over the vocabulary
rows both models have, which must cover every token.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from proofkd.core.tokenize import tokenize_stage1
from proofkd.plugin.heads import final_hidden_states, output_head
from proofkd.plugin.loss import LossStats, proof_kd_loss_float64
from proofkd.plugin.teacher import shared_vocab_rows


@torch.no_grad()
def heldout_metrics(
    student,
    teacher,
    tokenizer,
    rows: list[dict],
    *,
    sequence_len: int = 512,
    temperature: float = 1.0,
    progress: bool = True,
    desc: str = "held-out rows",
) -> dict[str, float]:
    """Mean CE of the student (all, derivation, other tokens) and mean KL(teacher || student) at `temperature`."""
    student.eval()
    teacher.eval()
    device = next(student.parameters()).device
    s_weight, t_weight = output_head(student).weight, output_head(teacher).weight.to(device)
    kl_vocab = shared_vocab_rows(len(tokenizer), s_weight.shape[0], t_weight.shape[0])
    total = LossStats.zeros()
    for row in tqdm(rows, desc=desc, disable=not progress, leave=False):
        encoded = tokenize_stage1(tokenizer, row["question"], row["CoT"], row["response"], sequence_len=sequence_len)
        ids = torch.tensor([encoded["input_ids"]], device=device)
        s_hidden = final_hidden_states(student, input_ids=ids, use_cache=False)[0, :-1]
        t_hidden = final_hidden_states(teacher, input_ids=ids.to(next(teacher.parameters()).device), use_cache=False)
        _, stats = proof_kd_loss_float64(
            s_hidden,
            s_weight,
            t_hidden[0, :-1].to(device),
            t_weight,
            torch.tensor(encoded["labels"][1:], device=device),
            torch.tensor(encoded["proof_mask"][1:], device=device),
            1.0,
            temperature=temperature,
            kl_vocab=kl_vocab,
        )
        total = total + stats
    means = total.means(temperature)
    return {key: means[key] for key in ("ce", "ce_proof", "ce_other", "kl", "tokens")}
