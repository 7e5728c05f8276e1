"""The tokenizer part of a GGUF file, read from a Hugging Face `tokenizer.json`.

Byte-level BPE tokenizers (SmolLM, Qwen2/2.5/3, Llama 3) are written as
llama.cpp's `gpt2` model: the token strings exactly as in `tokenizer.json`, a
type per token, the merges, the special token ids, the chat template, and the
name of llama.cpp's pre-tokenizer, which must be one llama.cpp knows (an
unknown name makes the file unloadable; a missing one silently changes how
text is split).

The `gguf` package's own BPE reader refuses the `tokenizer.json` files that
transformers 5 writes, so the vocabulary is read here; `gguf.SpecialVocab`
still supplies merges, special ids and the chat template.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf

# The regexes of the Split pre-tokenizers that llama.cpp recognises by name.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
KNOWN_PRE_TOKENIZERS = ("gpt2", "smollm", "qwen2", "llama-bpe")


class TokenizerExportError(ValueError):
    """A tokenizer that cannot be written as a llama.cpp vocabulary."""


def _pre_tokenizer_steps(spec: dict | None) -> list[dict]:
    if not spec:
        return []
    return list(spec.get("pretokenizers", [])) if spec.get("type") == "Sequence" else [spec]


def _split_pattern(step: dict) -> str | None:
    pattern = step.get("pattern") or {}
    return pattern.get("Regex") or pattern.get("String")


def detect_pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for this tokenizer's pre-tokenizer, from its structure.

    - a Split on Qwen2's regex: `qwen2` (Qwen2, 2.5, 3);
    - a Split on Llama 3's regex: `llama-bpe`;
    - GPT-2's byte-level regex, with digits split one by one (an explicit Digits
      step, or a vocabulary with no multi-digit token, as SmolLM's): `smollm`;
    - GPT-2's byte-level regex otherwise: `gpt2`.
    """
    steps = _pre_tokenizer_steps(tokenizer_json.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    for step in steps:
        if step.get("type") == "Split":
            pattern = _split_pattern(step)
            if pattern == QWEN2_SPLIT:
                return "qwen2"
            if pattern == LLAMA3_SPLIT:
                return "llama-bpe"
            raise TokenizerExportError(
                f"unrecognised pre-tokenizer split pattern {pattern!r}; name llama.cpp's pre-tokenizer "
                f"yourself (one of {', '.join(KNOWN_PRE_TOKENIZERS)})"
            )
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    if not byte_level or not byte_level[0].get("use_regex", True):
        raise TokenizerExportError(
            f"pre-tokenizer steps {kinds} are not a byte-level BPE llama.cpp knows; name llama.cpp's pre-tokenizer "
            f"yourself (one of {', '.join(KNOWN_PRE_TOKENIZERS)})"
        )
    digits_split = any(s.get("type") == "Digits" and s.get("individual_digits") for s in steps)
    vocab = tokenizer_json.get("model", {}).get("vocab", {})
    no_number_tokens = not any(re.search(r"\d\d", token) for token in vocab)
    return "smollm" if digits_split or no_number_tokens else "gpt2"


def vocabulary(tokenizer_json: dict, rows: int) -> tuple[list[str], list[int]]:
    """Token strings and types for every embedding row (padding rows become `[PADn]`, unused)."""
    model = tokenizer_json.get("model", {})
    if model.get("type") != "BPE":
        raise TokenizerExportError(f"only BPE tokenizers can be exported, not {model.get('type')!r}")
    by_id: dict[int, tuple[str, int]] = {i: (t, gguf.TokenType.NORMAL) for t, i in model["vocab"].items()}
    for added in tokenizer_json.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[added["id"]] = (added["content"], kind)
    if max(by_id) >= rows:
        raise TokenizerExportError(
            f"the tokenizer has token id {max(by_id)} but the model has only {rows} embedding rows"
        )
    tokens, types = [], []
    for i in range(rows):
        token, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(token)
        types.append(int(kind))
    return tokens, types


def add_tokenizer(writer: gguf.GGUFWriter, folder: Path, rows: int, pre_tokenizer: str | None = None) -> str:
    """Write the tokenizer of the HF `folder` into `writer`; return the pre-tokenizer name used."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TokenizerExportError(f"{folder} has no tokenizer.json; save the tokenizer beside the model")
    data = json.loads(path.read_text(encoding="utf-8"))
    pre = pre_tokenizer or detect_pre_tokenizer(data)
    if pre not in KNOWN_PRE_TOKENIZERS:
        raise TokenizerExportError(f"pre-tokenizer {pre!r} is not one of {', '.join(KNOWN_PRE_TOKENIZERS)}")
    tokens, types = vocabulary(data, rows)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    if not special.merges:
        raise TokenizerExportError(f"{path} has no BPE merges; llama.cpp cannot tokenise without them")
    special.add_to_gguf(writer, quiet=True)
    return pre
