"""Judging a GGUF file where it runs: llama.cpp's kernels against the HF model it came from, in float32.

llama-cpp-python runs each file (llama.cpp's own kernels, every position's
logits); the HF checkpoint runs in torch in float32. Both read the same held-out
text: by default held-out problems in the Stage-1 template the recipes train on,
or a UTF-8 text file the user names. The figures are those of
`llama-perplexity --kl-divergence`, by its rules:

- the HF tokenizer's ids are cut into windows of `window` tokens (512, its
  default context) and only the second half of each window is scored, so every
  scored token has at least half a window of context;
- per scored token, KLD = sum over the vocabulary of p_HF (ln p_HF - ln p_GGUF),
  leaving out the entries with ln p_HF <= -16, which it does not store;
- reported: the KLD's mean (with its standard error), median, p99, p99.9 and
  max; how often both models rank the same token first (with its binomial
  standard error); the RMS of dp = p_GGUF(next) - p_HF(next); and the mean of
  ln p_HF(next) - ln p_GGUF(next), which is ln(PPL_GGUF / PPL_HF), with its
  standard error.

llama-perplexity is a C++ program that llama-cpp-python does not ship, so its
rules are implemented here over llama-cpp-python's logits (and held to a plain
per-token loop in the tests). The files run on llama.cpp's standard CPU kernels
(`load_in_llama_cpp` says why its AMX and repacked weight layouts are off).

A file fails when it departs from its HF model, never because the model itself
is weak (an empty or odd reply that the HF model gives too is matched, not
failed):

- llama.cpp tokenises the text to other ids than the HF tokenizer does;
- its mean KLD exceeds the bound for its type (`KLD_BOUNDS`);
- its greedy continuation of a held-out prompt leaves the HF model's greedy
  continuation (32 tokens) within the first `GREEDY_TOKENS[type]` tokens, at a
  step where the HF model's choice was no near tie (it prefers its own token to
  the GGUF's by `TIE_NATS` or more). After the two part, the texts differ, so
  nothing further is compared; how far they went together is reported.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from proofkd.core.data.stem import generate
from proofkd.core.templates import render_stage1, render_stage1_prompt

from .gguf_file import load_in_llama_cpp, read_gguf

# The most mean KLD (nats per token) a file of each type may show. F16 sits at round-off; the quantised
# bounds are several times what these types measure on the embedded SmolLM2 (docs/results.md).
KLD_BOUNDS = {
    "F32": 1e-4,
    "F16": 1e-3,
    "BF16": 1e-2,
    "Q8_0": 2e-2,
    "Q6_K": 0.1,
    "Q5_K_M": 0.15,
    "Q4_K_M": 0.2,
    "Q4_K_S": 0.25,
    "IQ4_XS": 0.3,
    "Q3_K_M": 0.5,
}
# Greedy tokens that must agree with the HF model's, unless they part at a near tie. Files of 8 bits and more
# reproduce the model token for token; below that, a small model's continuation parts early even when the
# file is within its KLD bound (the quickstart student's Q4_K_M parts at its second token), so only the
# first tokens are held, which still catches a file that is broken rather than rounded.
GREEDY_TOKENS = {
    "F32": 32,
    "F16": 32,
    "BF16": 32,
    "Q8_0": 32,
    "Q6_K": 4,
    "Q5_K_M": 4,
    "Q4_K_M": 1,
    "Q4_K_S": 1,
    "IQ4_XS": 1,
    "Q3_K_M": 1,
}
TIE_NATS = 0.1
LOG_PROB_FLOOR = -16.0
DEFAULT_WINDOW = 512
DEFAULT_WINDOWS = 4
MIN_TOKENS = 16


class VerificationInputError(ValueError):
    """A verification text or setting that cannot be used; the message says why and the fix."""


def stage1_text(split: str, rows: int, seed: int) -> str:
    """`rows` generated problems of `split` rendered in the Stage-1 template, one after another."""
    return "\n\n".join(render_stage1(r["question"], r["CoT"], r["response"]).text for r in generate(split, rows, seed))


def heldout_text(rows: int = 48, seed: int = 0) -> str:
    """The default verification text: held-out problems, disjoint from any training split's."""
    return stage1_text("heldout", rows, seed)


def heldout_prompt(seed: int = 1) -> str:
    """A held-out problem's Stage-1 prompt, which the greedy comparison continues."""
    return render_stage1_prompt(generate("heldout", 1, seed)[0]["question"])


def read_text_file(path: str | Path, option: str = "--text") -> str:
    """The text in `path`, or a `VerificationInputError` naming `option`, the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise VerificationInputError(f"{option} {path} {'is a folder' if path.is_dir() else 'does not exist'}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise VerificationInputError(
            f"{option} {path} is not UTF-8 (byte 0x{raw[error.start]:02x} at offset {error.start}); re-encode it"
        ) from None
    if not text.strip():
        raise VerificationInputError(f"{option} {path} is empty: give text in the recipe's format")
    return text


def cut_windows(ids: Sequence[int], window: int, count: int) -> list[list[int]]:
    """Up to `count` consecutive whole windows of `ids`; all of `ids` as one window when shorter than one."""
    if len(ids) < MIN_TOKENS:
        raise VerificationInputError(
            f"the verification text is {len(ids)} tokens; give at least {MIN_TOKENS} (a few paragraphs)"
        )
    whole = [list(ids[i : i + window]) for i in range(0, len(ids) - window + 1, window)][:count]
    return whole or [list(ids)]


def scored_positions(window: int) -> slice:
    """The positions of a window whose next-token distribution is scored: its second half."""
    return slice(window // 2, window - 1)


@dataclass(frozen=True)
class Reference:
    """The HF model's view of the held-out text and of one greedy continuation, in float32."""

    text: str
    ids: list[int]
    windows: list[list[int]]
    logits: list[np.ndarray]  # per window, the logits at its scored positions
    prompt_ids: list[int]
    greedy_ids: list[int]  # the HF model's greedy continuation, ending with EOS if it stopped
    greedy_logits: np.ndarray  # the logits at each greedy step

    @property
    def tokens(self) -> int:
        return sum(len(logits) for logits in self.logits)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        *,
        text: str | None = None,
        window: int = DEFAULT_WINDOW,
        windows: int = DEFAULT_WINDOWS,
        greedy_tokens: int = max(GREEDY_TOKENS.values()),
    ) -> Reference:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if window < MIN_TOKENS or windows < 1:
            raise VerificationInputError(f"--window must be at least {MIN_TOKENS} and --windows at least 1")
        text = text if text is not None else heldout_text()
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        cut = cut_windows(ids, window, windows)
        model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = [model(torch.tensor([w])).logits[0, scored_positions(len(w))].numpy() for w in cut]
            prompt_ids = tokenizer(heldout_prompt(), add_special_tokens=False)["input_ids"]
            greedy_ids, greedy_logits = _hf_greedy(model, prompt_ids, greedy_tokens, tokenizer.eos_token_id)
        return cls(text, ids, cut, logits, prompt_ids, greedy_ids, greedy_logits)


def _hf_greedy(model, prompt_ids: list[int], steps: int, eos_id: int | None) -> tuple[list[int], np.ndarray]:
    import torch

    if steps == 0:
        return [], np.zeros((0, model.config.vocab_size), dtype=np.float32)

    out = model(torch.tensor([prompt_ids]), use_cache=True)
    tokens, logits = [], []
    for _ in range(steps):
        step_logits = out.logits[0, -1]
        token = int(step_logits.argmax())
        tokens.append(token)
        logits.append(step_logits.numpy())
        if token == eos_id:
            break
        out = model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens, np.stack(logits)


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def per_token_figures(base_logits: np.ndarray, gguf_logits: np.ndarray, targets: Sequence[int]) -> dict:
    """KLD, same top token, dp and ln p_HF - ln p_GGUF of the next token, per scored position, in float64."""
    columns = min(base_logits.shape[-1], gguf_logits.shape[-1])
    base, quant = log_softmax64(base_logits[:, :columns]), log_softmax64(gguf_logits[:, :columns])
    kld = np.where(base > LOG_PROB_FLOOR, np.exp(base) * (base - quant), 0.0).sum(axis=-1)
    rows, targets = np.arange(len(base)), np.asarray(targets)
    return {
        "kld": kld,
        "same_top": base.argmax(-1) == quant.argmax(-1),
        "dp": np.exp(quant[rows, targets]) - np.exp(base[rows, targets]),
        "ln_ratio": base[rows, targets] - quant[rows, targets],
        "base_log_prob": base[rows, targets],
    }


@dataclass(frozen=True)
class KLStatistics:
    """What `llama-perplexity --kl-divergence` prints, over the scored tokens."""

    tokens: int
    kld_mean: float
    kld_mean_err: float
    kld_median: float
    kld_p99: float
    kld_p999: float
    kld_max: float
    same_top: float
    same_top_err: float
    rms_dp: float
    ln_ppl_ratio: float
    ln_ppl_ratio_err: float
    ppl_hf: float
    ppl_gguf: float

    @classmethod
    def of(cls, parts: list[dict]) -> KLStatistics:
        figures = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        kld, n = figures["kld"], len(figures["kld"])
        same_top = float(figures["same_top"].mean())
        median, p99, p999 = np.percentile(kld, [50, 99, 99.9])

        def standard_error(values: np.ndarray) -> float:
            return float(values.std() / math.sqrt(n - 1)) if n > 1 else math.nan

        return cls(
            tokens=n,
            kld_mean=float(kld.mean()),
            kld_mean_err=standard_error(kld),
            kld_median=float(median),
            kld_p99=float(p99),
            kld_p999=float(p999),
            kld_max=float(kld.max()),
            same_top=same_top,
            same_top_err=math.sqrt(same_top * (1 - same_top) / (n - 1)) if n > 1 else math.nan,
            rms_dp=float(np.sqrt((figures["dp"] ** 2).mean())),
            ln_ppl_ratio=float(figures["ln_ratio"].mean()),
            ln_ppl_ratio_err=standard_error(figures["ln_ratio"]),
            ppl_hf=math.exp(-float(figures["base_log_prob"].mean())),
            ppl_gguf=math.exp(-float((figures["base_log_prob"] - figures["ln_ratio"]).mean())),
        )


@dataclass(frozen=True)
class GreedyComparison:
    """How far the GGUF's greedy continuation follows the HF model's."""

    compared: int  # the HF continuation's tokens that were compared
    agreed: int  # tokens both chose before they parted (all `compared` when they never did)
    margin: float | None  # where they parted: ln p_HF(HF's token) - ln p_HF(GGUF's token)
    required: int  # tokens that must agree unless they part at a near tie (GREEDY_TOKENS)
    text: str  # the GGUF's continuation up to and including where it parted

    @property
    def departed(self) -> bool:
        return self.margin is not None and self.margin >= TIE_NATS and self.agreed < self.required

    def describe(self) -> str:
        if self.margin is None:
            return f"{self.agreed}/{self.compared} same"
        if self.margin < TIE_NATS:
            kind = "near tie"
        else:
            kind = "departs" if self.departed else f"after the {self.required} held"
        return f"parts at {self.agreed + 1}/{self.compared} ({kind}, {self.margin:.2f} nats)"


@dataclass
class Verification:
    file: str
    quant: str
    size_bytes: int
    bits_per_weight: float
    statistics: KLStatistics
    tokenizer_agrees: bool
    greedy: GreedyComparison
    bound: float | None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def verify(
    path: str | Path, reference: Reference, *, quant: str | None = None, threads: int | None = None
) -> Verification:
    """Run `path` in llama.cpp over the reference's text and judge it (see the module docstring).

    `quant` defaults to the type the file's header names.
    """
    header = read_gguf(path)
    quant = quant or header.file_type
    context = max(max(len(w) for w in reference.windows), len(reference.prompt_ids) + len(reference.greedy_ids)) + 8
    threads = threads or os.cpu_count()
    llm = load_in_llama_cpp(
        header.path,
        n_ctx=context,
        n_batch=min(context, 512),
        logits_all=True,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    try:
        tokenizer_agrees = llm.tokenize(reference.text.encode("utf-8"), add_bos=False, special=True) == reference.ids
        parts = []
        for window, base_logits in zip(reference.windows, reference.logits, strict=True):
            llm.reset()
            llm.eval(window)
            scored = scored_positions(len(window))
            gguf_logits = np.asarray(llm.scores[: len(window)])[scored]
            parts.append(per_token_figures(base_logits, gguf_logits, window[scored.start + 1 :]))
        greedy = _compare_greedy(llm, reference, GREEDY_TOKENS.get(quant, max(GREEDY_TOKENS.values())))
    finally:
        llm.close()
    result = Verification(
        file=header.path.name,
        quant=quant,
        size_bytes=header.size_bytes,
        bits_per_weight=header.bits_per_weight,
        statistics=KLStatistics.of(parts),
        tokenizer_agrees=tokenizer_agrees,
        greedy=greedy,
        bound=KLD_BOUNDS.get(quant),
    )
    result.problems = _problems(result)
    return result


def _compare_greedy(llm, reference: Reference, required: int) -> GreedyComparison:
    llm.reset()
    llm.eval(reference.prompt_ids)
    expected = reference.greedy_ids
    chosen: list[int] = []
    margin = None
    for step, token in enumerate(expected):
        mine = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        chosen.append(mine)
        if mine != token:
            hf = log_softmax64(reference.greedy_logits[step])
            margin = float(hf[token] - hf[mine]) if mine < len(hf) else math.inf
            break
        if step + 1 < len(expected):
            llm.eval([mine])
    text = llm.detokenize(chosen).decode("utf-8", "replace")
    agreed = len(chosen) - (margin is not None)
    return GreedyComparison(compared=len(expected), agreed=agreed, margin=margin, required=required, text=text)


def _problems(result: Verification) -> list[str]:
    problems = []
    if not result.tokenizer_agrees:
        problems.append("llama.cpp tokenises the text to other ids than the HF tokenizer")
    kld = result.statistics.kld_mean
    if result.bound is not None and not (math.isfinite(kld) and kld <= result.bound):
        problems.append(f"mean KLD {kld:.3g} exceeds the {result.quant} bound {result.bound:g}")
    if result.greedy.departed:
        problems.append(
            f"greedy output departs from the HF model's at token {result.greedy.agreed + 1} "
            f"(the HF model prefers its own token by {result.greedy.margin:.2f} nats)"
        )
    return problems


def verification_table(results: list[Verification]) -> str:
    """The figures per file, as a markdown table (the CLI prints it; the model card carries it)."""
    lines = [
        "| file | type | size | bits/weight | KLD mean | KLD median | KLD p99 | KLD p99.9 | KLD max | same top | "
        "RMS Δp | ln(PPL_Q/PPL_HF) | greedy | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        s = r.statistics
        verdict = "pass" if r.passed else "FAIL: " + "; ".join(r.problems)
        lines.append(
            f"| {r.file} | {r.quant} | {r.size_bytes / 2**20:.1f} MiB | {r.bits_per_weight:.2f} | "
            f"{s.kld_mean:.2e} ± {s.kld_mean_err:.1e} | {s.kld_median:.2e} | {s.kld_p99:.2e} | {s.kld_p999:.2e} | "
            f"{s.kld_max:.2e} | {s.same_top:.1%} ± {s.same_top_err:.1%} | {s.rms_dp:.2%} | "
            f"{s.ln_ppl_ratio:+.4f} ± {s.ln_ppl_ratio_err:.4f} | {r.greedy.describe()} | {verdict} |"
        )
    return "\n".join(lines)
