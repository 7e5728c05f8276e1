"""The real Qwen3 tokenizer built offline (`proofkd:qwen3-tokenizer`), held against tiktoken on the same ranks."""

from __future__ import annotations

import json
import random
import re
import unicodedata

import pytest
from transformers import AutoTokenizer

from proofkd.core import embedded, qwen3
from proofkd.core.embedded import EmbeddedReferenceError

FIXED_TEXTS = [
    "Hello, world! I'LL don't they're we've it's",
    # unicode: CJK, emoji (with ZWJ and skin tone), Arabic, Cyrillic, Devanagari, combining marks
    "你好，世界。量子力学的薛定谔方程 👩🏽‍🔬🚀✨ مرحبا بالعالم Привет мир नमस्ते",
    "café naïve résumé Ångström ﬁ ① ²³ ½",
    # text in decomposed form: both sides apply NFC first
    unicodedata.normalize("NFD", "Ångström, café, Straße, 한국어"),
    # code
    'def f(x: int) -> int:\n    """Doc."""\n\tif x <= 0:\n\t\treturn -1\n    return {"k": [x ** 2, x // 3]}\n',
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * 2.5e-3f; } // C\r\n#include <stdio.h>\r\n",
    # math
    r"Proof: $\int_0^\infty e^{-x^2}\,dx = \frac{\sqrt{\pi}}{2}$, so 12345678 * 9 = 111111102 and x_{n+1} = x_n - f(x_n)/f'(x_n).",
    "∀ε>0 ∃δ>0: |x−a|<δ ⇒ |f(x)−f(a)|<ε; ∑_{k=1}^{n} k = n(n+1)/2 ≈ 3.14159",
    # whitespace runs
    "a     b\t\t\tc\n\n\n\nd   \n  \n\t \r\n   e" + " " * 17 + "f\u3000g\u00a0h",
    "   leading and trailing   ",
    "\n\n",
    # added tokens inside text
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|><|endoftext|>",
    "<tool_call>{}</tool_call><|fim_prefix|>x<|fim_suffix|>y<|fim_middle|><|vision_start|><|image_pad|><|vision_end|>",
]
_POOL = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    " \t\n\r.,;:!?'\"()[]{}<>+-*/=^_\\|@#$%&~`"
    "éèüßñçÅøœ你好世界数学证明αβγδπΣ∫∂√≤≥∞→日本語한국어😀🧮"
)


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    # one cache for the session's Qwen3 tests (tests/plugin/test_qwen3_vocab.py uses it too): built once
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROOFKD_CACHE", str(tmp_path_factory.getbasetemp() / "qwen3-cache"))
        path = embedded.resolve("proofkd:qwen3-tokenizer")
        assert embedded.resolve("proofkd:qwen3-tokenizer") == path  # cached: not built twice
        yield path


@pytest.fixture(scope="module")
def tokenizer(qwen3_dir):
    return AutoTokenizer.from_pretrained(qwen3_dir)


@pytest.fixture(scope="module")
def tiktoken_encoding():
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(qwen3.bpe_ranks_path()))
    specials = {token: qwen3.FIRST_ADDED_ID + i for i, token in enumerate(qwen3.ADDED_TOKENS)}
    return tiktoken.Encoding("qwen3", pat_str=qwen3.split_pattern(), mergeable_ranks=ranks, special_tokens=specials)


def _tiktoken_ids(encoding, text: str) -> list[int]:
    return encoding.encode(unicodedata.normalize("NFC", text), allowed_special="all")


def test_sizes_and_added_token_ids(tokenizer, qwen3_dir):
    assert len(tokenizer) == qwen3.TOKENS == 151_669
    assert tokenizer.convert_tokens_to_ids(list(qwen3.ADDED_TOKENS)) == list(range(151_643, 151_669))
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 151_645)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 151_643)
    assert tokenizer.bos_token is None
    # the BPE part is the package's ranks, all of them
    assert max(v for k, v in tokenizer.get_vocab().items() if k not in qwen3.ADDED_TOKENS) == 151_642
    assert json.loads((qwen3_dir / "tokenizer.json").read_text())["normalizer"]["type"] == "NFC"


@pytest.mark.parametrize("index", range(len(FIXED_TEXTS)))
def test_encodes_like_tiktoken(tokenizer, tiktoken_encoding, index):
    text = FIXED_TEXTS[index]
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == _tiktoken_ids(tiktoken_encoding, text)
    assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


def test_encodes_like_tiktoken_on_random_text(tokenizer, tiktoken_encoding, seed):
    rng = random.Random(seed)
    texts = ["".join(rng.choice(_POOL) for _ in range(rng.randrange(1, 300))) for _ in range(200)]
    texts += [
        " " * rng.randrange(1, 40) + "x" + "\n" * rng.randrange(1, 6) + "\t" * rng.randrange(0, 4) for _ in range(50)
    ]
    for text in texts:
        assert tokenizer.encode(text, add_special_tokens=False) == _tiktoken_ids(tiktoken_encoding, text), repr(text)


def test_special_and_plain_added_tokens(tokenizer):
    ids = tokenizer.encode("<|im_start|>a<think>b</think><|im_end|>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a<think>b</think>"


def test_chat_template_is_qwen3s(tokenizer):
    messages = [{"role": "user", "content": "What is 2+2?"}]
    off = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert off == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    # Axolotl's copy of the template opens the thought when thinking is on
    on = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert on == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n"


def test_bad_qwen3_references_say_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.setenv("PROOFKD_CACHE", str(tmp_path))
    with pytest.raises(EmbeddedReferenceError, match=re.escape("variant must be one of ['base', 'instruct']")):
        embedded.resolve("proofkd:qwen3-tokenizer?variant=chat")
    with pytest.raises(EmbeddedReferenceError, match="layers must be between 1 and 28"):
        embedded.resolve("proofkd:qwen3-1.7b-slice?layers=29")
    with pytest.raises(EmbeddedReferenceError, match="unknown parameter"):
        embedded.resolve("proofkd:qwen3-4b-base-slice?experts=16")
    with pytest.raises(EmbeddedReferenceError, match="experts must be between 8"):
        embedded.resolve("proofkd:qwen3-30b-a3b-slice?experts=4")


def test_published_configs_match_facts():
    student = qwen3.published_config("Qwen/Qwen3-1.7B")
    assert (student.hidden_size, student.intermediate_size, student.num_hidden_layers) == (2048, 6144, 28)
    assert (student.num_attention_heads, student.num_key_value_heads, student.head_dim) == (16, 8, 128)
    assert student.vocab_size == 151_936 and student.tie_word_embeddings
    moe = qwen3.published_config("Qwen/Qwen3-30B-A3B-Instruct-2507")
    assert (moe.num_hidden_layers, moe.num_attention_heads, moe.num_key_value_heads) == (48, 32, 4)
    assert (moe.num_experts, moe.num_experts_per_tok, moe.moe_intermediate_size) == (128, 8, 768)
    assert not moe.tie_word_embeddings
    opd_teacher = qwen3.published_config("lllyx/Qwen3-4B-Base-GRPO")
    assert (opd_teacher.hidden_size, opd_teacher.num_hidden_layers, opd_teacher.num_attention_heads) == (2560, 36, 32)
    assert qwen3.published_config("Qwen/Qwen3-30B-A3B-Instruct-2507", layers=2, experts=16).num_experts == 16
