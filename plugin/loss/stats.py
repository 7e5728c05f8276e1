"""Detached sums that a loss call returns beside the loss, for logging.

Kept as sums (not means) so that micro-batches, accumulation steps and ranks
add up exactly; `means()` turns them into the logged figures.

Beside the whole batch's figures, each span of a row has its own: the prompt
(trained tokens before the row's derivation, which only `train_on_inputs`
trains), the derivation (between `Proof:` and `Final Answer:`) and the answer
(the trained tokens after it, or all of a row without one). Per span: tokens,
CE, the divergence to the teacher at T, the student's and the teacher's
entropy at T = 1, and the student's probability mass on the teacher's most
likely tokens (its 16 most likely, or the top-k a top-k teacher gives).
"""

from __future__ import annotations

import torch

SPANS = ("prompt", "derivation", "answer")
PROMPT, DERIVATION, ANSWER = range(len(SPANS))
SPAN_METRICS = ("tokens", "ce", "kl", "student_entropy", "teacher_entropy", "topk_overlap")
# The student's mass on this many of the teacher's most likely tokens (a full-distribution teacher's).
OVERLAP_K = 16

# The sums a loss chunk returns: the batch's, then per span (span-major), then the rows that had a teacher.
CHUNK_FIELDS = (
    ("ce_proof", "proof_tokens", "ce_other", "other_tokens", "kl", "ce_weighted", "ce_weight")
    + tuple(f"{span}_{metric}" for span in SPANS for metric in SPAN_METRICS)
    + ("teacher_rows",)
)
# ... then those of a top-k teacher (its mass outside the top-k, and its tokens).
FIELDS = (*CHUNK_FIELDS, "teacher_tail", "topk_tokens")


def token_spans(labels: torch.Tensor, proof_mask: torch.Tensor) -> torch.Tensor:
    """The span of every position of a `[rows, tokens]` batch: PROMPT, DERIVATION or ANSWER.

    Positions before a row's first derivation token are its prompt; a row
    without a derivation is all answer. Only the trained positions are ever read.
    """
    proof = proof_mask != 0
    first = torch.where(proof.any(dim=1), proof.int().argmax(dim=1), 0)
    before = torch.arange(labels.shape[1], device=labels.device)[None, :] < first[:, None]
    spans = torch.full_like(labels, ANSWER)
    spans[before] = PROMPT
    spans[proof] = DERIVATION
    return spans


def span_sums(spans: torch.Tensor, per_token: torch.Tensor) -> torch.Tensor:
    """`per_token` `[rows, len(SPAN_METRICS)]` summed over each span's rows, span-major, as one vector."""
    one_hot = torch.nn.functional.one_hot(spans, len(SPANS)).to(per_token.dtype)
    return (one_hot.T @ per_token).reshape(-1)


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
        """The logged figures: mean CE on proof and other tokens, mean KL, weighted CE; a top-k teacher's tail mass;
        per span with tokens, `<span>/<metric>` (a span without tokens, or teacher figures without a teacher,
        are left out rather than logged as NaN)."""
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
        teacher = s["teacher_rows"] > 0
        for span in SPANS:
            count = s[f"{span}_tokens"]
            if count == 0:
                continue
            means[f"{span}/tokens"] = count
            for metric in SPAN_METRICS[1:]:
                if teacher or metric not in ("kl", "teacher_entropy", "topk_overlap"):
                    means[f"{span}/{metric}"] = s[f"{span}_{metric}"] / count
        return means
