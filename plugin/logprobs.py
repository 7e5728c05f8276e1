"""Log-probabilities of given tokens (and each position's top-k), from final hidden states.

OPD needs the teacher's log-probability of every token the student sampled,
over completions of thousands of tokens and vocabularies of 150k: the
`[tokens, vocab]` logits of a whole completion would take gigabytes. So the
output projection is applied in row chunks, and only the gathered
log-probabilities (and the top-k) are kept. No gradient flows through here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from proofkd.plugin.loss import auto_chunk_size


@dataclass
class TokenScores:
    """Per-token log-probabilities `[..., T]`, and optionally the top-k ids and log-probs `[..., T, k]`."""

    logps: torch.Tensor
    topk_ids: torch.Tensor | None = None
    topk_logps: torch.Tensor | None = None

    def reshape(self, *shape: int) -> TokenScores:
        return TokenScores(
            self.logps.reshape(*shape),
            None if self.topk_ids is None else self.topk_ids.reshape(*shape, -1),
            None if self.topk_logps is None else self.topk_logps.reshape(*shape, -1),
        )


@torch.no_grad()
def token_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    topk: int = 0,
    chunk_size: int | None = None,
) -> TokenScores:
    """log softmax(hidden @ weight^T)[target] for each row, in float32; plus the top-k if `topk`."""
    chunk = chunk_size or auto_chunk_size(weight.shape[0])
    logps, ids, values = [], [], []
    for start in range(0, hidden.shape[0], chunk):
        logits = (hidden[start : start + chunk].to(weight.dtype) @ weight.T).float()
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        logps.append((logits.gather(1, targets[start : start + chunk, None]) - lse).squeeze(1))
        if topk:
            top = logits.topk(topk, dim=-1)
            ids.append(top.indices)
            values.append(top.values - lse)
    if not logps:  # no rows: empty tensors of the right shapes
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return TokenScores(
            empty,
            hidden.new_zeros(0, topk, dtype=torch.long) if topk else None,
            hidden.new_zeros(0, topk, dtype=torch.float32) if topk else None,
        )
    return TokenScores(torch.cat(logps), torch.cat(ids) if topk else None, torch.cat(values) if topk else None)


def overlap_mass(student: TokenScores, teacher: TokenScores) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, the student's and the teacher's probability mass on tokens in both top-k sets."""
    shared = student.topk_ids[..., :, None] == teacher.topk_ids[..., None, :]  # [..., k_s, k_t]
    student_mass = (student.topk_logps.exp() * shared.any(-1)).sum(-1)
    teacher_mass = (teacher.topk_logps.exp() * shared.any(-2)).sum(-1)
    return student_mass, teacher_mass
