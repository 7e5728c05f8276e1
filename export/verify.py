"""Checking a GGUF file against the Hugging Face model it came from.

For each file, llama-cpp-python loads it, tokenises a fixed text (the ids must
equal the HF tokenizer's), computes next-token distributions over that text,
and generates a short reply. The distributions are compared with the HF
model's in float64: mean KL(HF || GGUF) per token, top-1 agreement, and the
perplexity of the text under each. A file passes when its tokenizer agrees,
it generates, and its KL is within the bound stated for its type below
(F16 near round-off; 8-bit well under 1e-2 nats; 5- and 4-bit K-quants under
0.15 and 0.2, measured on SmolLM2-135M at 0.07 and 0.05).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

# Mean KL(HF || GGUF) in nats per token that a file of each type must stay within.
KL_BOUNDS = {"F32": 1e-4, "F16": 1e-3, "BF16": 1e-2, "Q8_0": 2e-2, "Q5_K_M": 0.15, "Q4_K_M": 0.2}

DEFAULT_TEXT = (
    "Solve the following problem carefully and show a rigorous derivation.\n"
    "Problem:\nA cart starts from rest and accelerates uniformly at 3 m/s^2. How far does it travel in 4 s?\n"
    "Proof:\nThe cart starts from rest, so u = 0. For uniform acceleration s = u t + (1/2) a t^2.\n"
    "With a = 3 m/s^2 and t = 4 s: s = (1/2)(3)(16) = 24 m.\nFinal Answer:\n24 m\n\n"
    "### Instruction:\nWhat is the difference between a felony and a misdemeanor?\n### Response:\n"
    "A felony is a serious crime punishable by more than a year in prison; a misdemeanor is a lesser offense."
)
PROMPT = "What is 2 + 3?"


@dataclass(frozen=True)
class Reference:
    """The HF model's view of the verification text."""

    text: str
    ids: list[int]
    log_probs: np.ndarray  # [tokens, vocab] float64

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, text: str = DEFAULT_TEXT, max_tokens: int = 256) -> Reference:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        return cls(text=text, ids=ids, log_probs=torch.log_softmax(logits, dim=-1).numpy())


@dataclass
class Verification:
    file: str
    quant: str
    size_bytes: int
    tokens: int
    kl: float
    top1: float
    ppl_hf: float
    ppl_gguf: float
    tokenizer_agrees: bool
    generated: str
    bound: float
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def compare(reference_log_probs: np.ndarray, logits: np.ndarray, ids: list[int]) -> dict:
    """KL, top-1 agreement and perplexities of GGUF `logits` against the reference, over the text."""
    rows = len(ids)
    p, q = reference_log_probs[:rows], _log_softmax(logits[:rows, : reference_log_probs.shape[-1]])
    kl = float((np.exp(p) * (p - q)).sum(axis=-1).mean())
    targets = np.asarray(ids[1:rows])
    at = np.arange(rows - 1)
    return {
        "kl": kl,
        "top1": float((p.argmax(-1) == q.argmax(-1)).mean()),
        "ppl_hf": math.exp(-float(p[at, targets].mean())),
        "ppl_gguf": math.exp(-float(q[at, targets].mean())),
    }


def verify(path: str | Path, quant: str, reference: Reference, *, threads: int | None = None) -> Verification:
    """Load `path` in llama-cpp-python and check it against `reference` (see the module docstring)."""
    from llama_cpp import Llama

    path = Path(path)
    ids = reference.ids
    llm = Llama(
        model_path=str(path),
        n_ctx=len(ids) + 64,
        logits_all=True,
        n_threads=threads or os.cpu_count(),
        n_threads_batch=threads or os.cpu_count(),
        verbose=False,
    )
    try:
        tokenizer_agrees = llm.tokenize(reference.text.encode("utf-8"), add_bos=False, special=True) == ids
        llm.reset()
        llm.eval(ids)
        figures = compare(reference.log_probs, np.asarray(llm.scores[: llm.n_tokens]), ids)
        llm.reset()
        generated = _generate(llm)
    finally:
        llm.close()
    bound = KL_BOUNDS[quant]
    result = Verification(
        file=path.name,
        quant=quant,
        size_bytes=path.stat().st_size,
        tokens=len(ids),
        tokenizer_agrees=tokenizer_agrees,
        generated=generated,
        bound=bound,
        **figures,
    )
    if not tokenizer_agrees:
        result.problems.append("llama.cpp tokenises the text differently from the HF tokenizer")
    if not math.isfinite(result.kl) or result.kl > bound:
        result.problems.append(f"KL {result.kl:.3g} exceeds the {quant} bound {bound:g}")
    if not generated.strip():
        result.problems.append("generated nothing")
    return result


def _generate(llm) -> str:
    if llm.metadata.get("tokenizer.chat_template"):
        reply = llm.create_chat_completion(
            messages=[{"role": "user", "content": PROMPT}], max_tokens=16, temperature=0.0
        )
        return reply["choices"][0]["message"]["content"] or ""
    return llm.create_completion(PROMPT, max_tokens=16, temperature=0.0)["choices"][0]["text"]


def verification_table(results: list[Verification]) -> str:
    lines = [
        "| file | type | size | KL(HF ‖ GGUF) / token | bound | top-1 agree | ppl HF → GGUF | tokenizer | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.file} | {r.quant} | {r.size_bytes / 2**20:.1f} MiB | {r.kl:.2e} | {r.bound:g} | {r.top1:.1%} | "
            f"{r.ppl_hf:.3f} → {r.ppl_gguf:.3f} | {'same ids' if r.tokenizer_agrees else 'differs'} | "
            f"{'pass' if r.passed else 'FAIL: ' + '; '.join(r.problems)} |"
        )
    return "\n".join(lines)
