"""How far a top-k teacher's KL is from the full-vocabulary KL, renormalised and with a tail bucket.

    python bench/topk_kl.py [--rows 8] [--tokens 256] [--temperature 2] [--pairs smollm2 qwen3]

A served teacher gives only its top-k log-probabilities at each position; the
KL then runs over those, renormalised (`proofkd_teacher_topk_tail:
renormalize`) or with one bucket for the rest of each side's mass (`bucket`).
For each student-teacher pair, on held-out STEM rows in the Stage-1 template,
this computes in float64 (`proofkd.plugin.loss.proof_kd_loss_float64`, the
function the tests hold the training loss to) the mean full KL at T and the
mean top-k KL for each k and tail, and prints a Markdown table of the top-k
KL's relative error and the teacher's mean tail mass.

Pairs: `smollm2`, the embedded teacher (`proofkd:smollm2-135m-instruct`) and
the quickstart's 10-layer student cut from it; `qwen3`, the real-width slices
`proofkd:qwen3-1.7b-slice` (student) and `proofkd:qwen3-30b-a3b-slice`
(teacher) with the real 151,936-row vocabulary. The slices have random
weights, so their distributions are far flatter than a trained model's: their
rows are the worst case for a top-k, not a forecast.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from proofkd.core import embedded  # noqa: E402
from proofkd.core.data.stem import generate  # noqa: E402
from proofkd.core.tokenize import tokenize_stage1  # noqa: E402
from proofkd.plugin.heads import final_hidden_states, output_head  # noqa: E402
from proofkd.plugin.loss import LossStats, proof_kd_loss_float64  # noqa: E402

PAIRS = {
    "smollm2": ("proofkd:smollm2-135m-instruct?layers=10", "proofkd:smollm2-135m-instruct"),
    "qwen3": ("proofkd:qwen3-1.7b-slice", "proofkd:qwen3-30b-a3b-slice"),
}
KS = (8, 20, 64, 256)
TAILS = ("renormalize", "bucket")


def load(reference: str):
    return AutoModelForCausalLM.from_pretrained(embedded.resolve(reference), dtype=torch.float32).eval()


@torch.no_grad()
def pair_kls(student_ref: str, teacher_ref: str, rows: int, tokens: int, temperature: float) -> dict:
    """Mean full KL, and per (k, tail) the mean top-k KL and the teacher's mean tail mass."""
    tokenizer = AutoTokenizer.from_pretrained(embedded.resolve(student_ref))
    student, teacher = load(student_ref), load(teacher_ref)
    s_weight, t_weight = output_head(student).weight, output_head(teacher).weight
    vocab = min(s_weight.shape[0], t_weight.shape[0])
    full = LossStats.zeros()
    topk = {(k, tail): LossStats.zeros() for k in KS for tail in TAILS}
    for row in generate("heldout", rows, seed=11):
        encoded = tokenize_stage1(tokenizer, row["question"], row["CoT"], row["response"], sequence_len=tokens)
        ids = torch.tensor([encoded["input_ids"]])
        s_hidden = final_hidden_states(student, input_ids=ids, use_cache=False)[0, :-1]
        t_hidden = final_hidden_states(teacher, input_ids=ids, use_cache=False)[0, :-1]
        labels = torch.tensor(encoded["labels"][1:])
        proof = torch.tensor(encoded["proof_mask"][1:])
        common = dict(temperature=temperature, kl_vocab=vocab)
        full = full + proof_kd_loss_float64(s_hidden, s_weight, t_hidden, t_weight, labels, proof, 1.0, **common)[1]
        # what a server returns: the teacher's top-k log-probabilities at T = 1, in float32
        t_logp = torch.log_softmax((t_hidden.double() @ t_weight.double().T)[:, :vocab], dim=-1)
        for k in KS:
            top = t_logp.topk(k, dim=-1)
            for tail in TAILS:
                _, stats = proof_kd_loss_float64(
                    s_hidden,
                    s_weight,
                    None,
                    None,
                    labels,
                    proof,
                    1.0,
                    teacher_topk=(top.indices, top.values.float()),
                    topk_tail=tail,
                    **common,
                )
                topk[(k, tail)] = topk[(k, tail)] + stats
    return {"full": full.means(temperature)["kl"], "topk": {key: s.means(temperature) for key, s in topk.items()}}


def table(results: dict, temperature: float) -> str:
    lines = [
        f"| pair | k | tail | top-k KL at T={temperature:g} | full KL | relative error | teacher tail mass |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        full = result["full"]
        for (k, tail), means in result["topk"].items():
            error = (means["kl"] - full) / full
            lines.append(
                f"| {name} | {k} | {tail} | {means['kl']:.4f} | {full:.4f} | {error:+.1%} | "
                f"{means['teacher_tail_mass']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8, help="held-out rows per pair")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per row at most")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    args = parser.parse_args()
    results = {name: pair_kls(*PAIRS[name], args.rows, args.tokens, args.temperature) for name in args.pairs}
    print(table(results, args.temperature))


if __name__ == "__main__":
    main()
