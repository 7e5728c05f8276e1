"""Detached sums that a loss call returns beside the loss, for logging.

Kept as sums (not means) so that micro-batches, accumulation steps and ranks
add up exactly; `means()` turns them into the logged figures.
"""

from __future__ import annotations

import torch

# The sums a loss chunk returns, then those of a top-k teacher (its mass outside the top-k, and its tokens).
CHUNK_FIELDS = ("ce_proof", "proof_tokens", "ce_other", "other_tokens", "kl", "ce_weighted", "ce_weight")
FIELDS = (*CHUNK_FIELDS, "teacher_tail", "topk_tokens")


class LossStats:
    """A float64 vector of the sums named in `FIELDS`."""

    __slots__ = ("sums",)

    def __init__(self, sums: torch.Tensor):
        if sums.shape != (len(FIELDS),):
            raise ValueError(f"LossStats needs {len(FIELDS)} sums, got shape {tuple(sums.shape)}")
        self.sums = sums

    @classmethod
    def zeros(cls, device: torch.device | str | None = None) -> LossStats:
        return cls(torch.zeros(len(FIELDS), dtype=torch.float64, device=device))

    @classmethod
    def from_sums(cls, **sums: torch.Tensor | float) -> LossStats:
        missing = set(FIELDS) - set(sums)
        if missing:
            raise ValueError(f"missing sums: {sorted(missing)}")
        device = next((v.device for v in sums.values() if isinstance(v, torch.Tensor)), None)
        return cls(
            torch.stack([torch.as_tensor(sums[name], dtype=torch.float64, device=device).detach() for name in FIELDS])
        )

    def __add__(self, other: LossStats) -> LossStats:
        return LossStats(self.sums + other.sums.to(self.sums.device))

    def __getitem__(self, name: str) -> float:
        return float(self.sums[FIELDS.index(name)])

    def means(self, temperature: float) -> dict[str, float]:
        """The logged figures: mean CE on proof and other tokens, mean KL, weighted CE; a top-k teacher's tail mass."""
        s = dict(zip(FIELDS, self.sums.tolist(), strict=True))
        tokens = s["proof_tokens"] + s["other_tokens"]

        def ratio(num: float, den: float) -> float:
            return num / den if den > 0 else float("nan")

        means = {
            "ce_proof": ratio(s["ce_proof"], s["proof_tokens"]),
            "ce_other": ratio(s["ce_other"], s["other_tokens"]),
            "ce": ratio(s["ce_proof"] + s["ce_other"], tokens),
            "ce_weighted": ratio(s["ce_weighted"], s["ce_weight"]),
            "kl": ratio(s["kl"], tokens),
            "kd_term": temperature**2 * ratio(s["kl"], tokens),
            "proof_token_frac": ratio(s["proof_tokens"], tokens),
            "tokens": tokens,
        }
        if s["topk_tokens"] > 0:
            means["teacher_tail_mass"] = s["teacher_tail"] / s["topk_tokens"]
        return means
