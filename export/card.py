"""The model card of a published GGUF repository: metadata, files, how they were checked, usage."""

from __future__ import annotations

import re

from huggingface_hub import ModelCard, ModelCardData

from .verify import Verification, verification_table

QUANT_NOTES = {
    "F16": "16-bit floats: the reference file, indistinguishable from the original",
    "Q8_0": "8-bit: near-lossless, about half the size of F16",
    "Q6_K": "6-bit K-quant: close to Q8_0 in quality, smaller",
    "Q5_K_M": "5-bit K-quant, medium: a good balance of size and quality",
    "Q4_K_M": "4-bit K-quant, medium: the usual choice for laptops and phones",
    "Q4_K_S": "4-bit K-quant, small: a little smaller than Q4_K_M, a little further from the original",
    "IQ4_XS": "4-bit i-quant: about Q4_K_S's quality in less space",
    "Q3_K_M": "3-bit K-quant, medium: for the tightest memory; noticeably further from the original",
}


def model_card(
    *,
    repo_id: str,
    results: list[Verification],
    architecture: str,
    base_model: str | None = None,
    license: str | None = None,
    verification_tokens: int | None = None,
    quantizer_notes: dict[str, list[str]] | None = None,
    imatrix: tuple[str, str, list[str]] | None = None,
) -> ModelCard:
    """A card for `repo_id` listing `results` (only files that passed are meant to be in it).

    `quantizer_notes` are llama.cpp's summaries per type; a fallback (rows not a
    multiple of 256) is stated under the files, since it changes what a K-quant holds.
    `imatrix` is (file, calibration data, types quantised with it), named under the files.
    """
    data = ModelCardData(
        base_model=base_model,
        base_model_relation="quantized" if base_model else None,
        library_name="gguf",
        license=license,
        pipeline_tag="text-generation",
        tags=["gguf", "llama.cpp", architecture, "proofkd"],
    )
    title = repo_id.split("/")[-1]
    source = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "the original checkpoint"
    example = next((r.file for r in results if r.quant == "Q4_K_M"), results[0].file)
    quant_of = {r.file: r.quant for r in results}
    lines = [
        f"# {title}",
        "",
        f"GGUF files of {source} for llama.cpp and the programs built on it, converted and quantised by proofkd.",
        "",
        "## Files",
        "",
        "| file | type | size | bits/weight | what it is |",
        "|---|---|---:|---:|---|",
    ]
    lines += [
        f"| {r.file} | {r.quant} | {r.size_bytes / 2**20:.1f} MiB | {r.bits_per_weight:.2f} | "
        f"{QUANT_NOTES.get(quant_of[r.file], '')} |"
        for r in results
    ]
    fallbacks = [
        f"- {quant}: llama.cpp reports that {_fallback_count(notes)} needed another type, because their rows "
        "are not a multiple of 256; judge this file by the measured figures below, not by its name."
        for quant, notes in (quantizer_notes or {}).items()
        if _fallback_count(notes)
    ]
    if fallbacks:
        lines += ["", *fallbacks]
    if imatrix:
        file, calibration, types = imatrix
        lines += [
            "",
            f"{', '.join(types)} were quantised with an importance matrix computed from the original model on "
            f"{calibration}; it is included as `{file}` (llama.cpp's GGUF imatrix format, for `llama-quantize "
            "--imatrix`).",
        ]
    lines += [
        "",
        "## How each file was checked",
        "",
        "Each file was run by llama.cpp (through llama-cpp-python) and compared with the original model in "
        "float32 on held-out text"
        + (f" ({verification_tokens} scored tokens)" if verification_tokens else "")
        + ", with the statistics `llama-perplexity --kl-divergence` reports and by its rules (the second half of "
        "each 512-token window is scored): the KL divergence per token from the original's next-token "
        "distribution (mean with its standard error, median, p99, p99.9, max), how often both rank the same token "
        "first, the RMS of the change in the next token's probability, and ln(PPL_Q / PPL_original). llama.cpp "
        "tokenised the text to the original tokenizer's ids, and its greedy continuation of a held-out prompt "
        "followed the original's. A file outside its type's bound is not published.",
        "",
        verification_table(results),
        "",
        "## Use",
        "",
        "With llama.cpp:",
        "",
        "```bash",
        f'llama-cli -hf {repo_id}:{quant_of[example]} -p "What is the difference between negligence and strict liability?"',
        f"llama-server -hf {repo_id}:{quant_of[example]}",
        "```",
        "",
        "With Ollama:",
        "",
        "```bash",
        f"ollama run hf.co/{repo_id}:{quant_of[example]}",
        "```",
        "",
        "With llama-cpp-python:",
        "",
        "```python",
        "from llama_cpp import Llama",
        "",
        f'llm = Llama.from_pretrained(repo_id="{repo_id}", filename="{example}")',
        'reply = llm.create_chat_completion(messages=[{"role": "user", "content": "What is 2 + 3?"}])',
        'print(reply["choices"][0]["message"]["content"])',
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _fallback_count(notes: list[str]) -> str | None:
    """'180 of 272 tensors' from llama.cpp's fallback summary, if it gave one."""
    for note in notes:
        match = re.search(r"(\d+) of (\d+) tensor", note)
        if match and "fallback" in note:
            return f"{match.group(1)} of {match.group(2)} tensors"
    return None
