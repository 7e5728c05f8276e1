"""GGUF export: round trips of the embedded SmolLM2 (llama) and tiny Qwen3s (tied and untied),
through llama-cpp-python and transformers, plus the pieces that make a file loadable."""

from __future__ import annotations

import json

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from proofkd.core.data.stem import generate
from proofkd.export import convert as convert_module
from proofkd.export.convert import ConversionError, convert, interleave_rotary_halves
from proofkd.export.publish import export
from proofkd.export.quantize import QuantizationError, quantize
from proofkd.export.tokenizer import (
    LLAMA3_SPLIT,
    QWEN2_SPLIT,
    TokenizerExportError,
    detect_pre_tokenizer,
    vocabulary,
)
from proofkd.export.verify import KLD_BOUNDS, KLStatistics, Reference, per_token_figures, scored_positions
from tests.helpers import make_model, make_tokenizer, pretrain

QUANTS = ["F16", "Q8_0", "Q5_K_M", "Q4_K_M"]
CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_export(smollm2, tmp_path_factory):
    return smollm2, export(smollm2, tmp_path_factory.mktemp("smol"), QUANTS, threads=2, progress=False)


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def qwen3_export(request, tmp_path_factory):
    """A 2-layer Qwen3 (hidden 256, head_dim 128, FFN 512) trained for 80 steps, then exported."""
    root = tmp_path_factory.mktemp("qwen3")
    make_tokenizer(root / "tok", split_pattern=QWEN2_SPLIT, chat_template=CHAT)
    model = make_model(
        root / "model",
        root / "tok",
        hidden=256,
        layers=2,
        seed=3,
        arch="qwen3",
        heads=2,
        kv_heads=1,
        head_dim=128,
        intermediate=512,
        tied=request.param,
    )
    pretrain(model, generate("train", 200, seed=4), steps=80)
    return model, export(model, root / "gguf", QUANTS, threads=2, progress=False)


def check_llama_cpp_results(done):
    assert [r.quant for r in done.results] == QUANTS
    for result in done.results:
        assert result.passed, (result.file, result.problems)
        assert result.tokenizer_agrees and result.statistics.tokens >= 255
    by_type = {r.quant: r for r in done.results}
    # F16 agrees with the HF model to round-off, greedily too; each coarser type stays within its stated bound.
    f16 = by_type["F16"]
    assert f16.statistics.kld_mean < 1e-4 and f16.statistics.same_top > 0.98
    assert f16.greedy.agreed == f16.greedy.compared > 0
    for quant in ("Q8_0", "Q5_K_M", "Q4_K_M"):
        assert by_type[quant].statistics.kld_mean < KLD_BOUNDS[quant], quant
    sizes = [by_type[q].size_bytes for q in QUANTS]
    assert sizes == sorted(sizes, reverse=True)
    assert 16 <= f16.bits_per_weight < 16.5
    report = json.loads((done.folder / "verification.json").read_text())
    assert [f["quant"] for f in report["files"]] == QUANTS and all(f["passed"] for f in report["files"])
    assert report["unverified"] == []


def check_transformers_round_trip(checkpoint, done):
    reference = Reference.from_checkpoint(checkpoint, window=64, windows=1)
    window, scored = reference.windows[0], scored_positions(64)
    config = json.loads((checkpoint / "config.json").read_text())
    for result in done.results:
        loaded = AutoModelForCausalLM.from_pretrained(done.folder, gguf_file=result.file, dtype=torch.float32)
        assert loaded.config.tie_word_embeddings == config.get("tie_word_embeddings", False)
        assert loaded.config.head_dim == config.get("head_dim", config["hidden_size"] // config["num_attention_heads"])
        with torch.no_grad():
            logits = loaded.eval()(torch.tensor([window])).logits[0, scored].numpy()
        kld = KLStatistics.of([per_token_figures(reference.logits[0], logits, window[scored.start + 1 :])]).kld_mean
        bound = 1e-4 if result.quant == "F16" else KLD_BOUNDS[result.quant]
        assert kld < bound, (result.file, kld)


def test_smollm2_files_load_in_llama_cpp_and_pass(smollm2_export):
    check_llama_cpp_results(smollm2_export[1])


def test_qwen3_files_load_in_llama_cpp_and_pass(qwen3_export):
    check_llama_cpp_results(qwen3_export[1])


def test_smollm2_files_read_back_into_transformers(smollm2_export):
    check_transformers_round_trip(*smollm2_export)


def test_qwen3_files_read_back_into_transformers(qwen3_export):
    check_transformers_round_trip(*qwen3_export)


def test_smollm2_metadata_is_what_llama_cpp_needs(smollm2_export):
    _, smol = smollm2_export
    fields = gguf.GGUFReader(smol.folder / next(r.file for r in smol.results if r.quant == "F16")).fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert fields["llama.rope.freq_base"].contents() == pytest.approx(100000.0)
    assert fields["llama.rope.dimension_count"].contents() == 64
    assert fields["tokenizer.ggml.eos_token_id"].contents() == 2
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()


def test_qwen3_metadata_is_what_llama_cpp_needs(qwen3_export):
    checkpoint, qwen = qwen3_export
    reader = gguf.GGUFReader(qwen.folder / next(r.file for r in qwen.results if r.quant == "F16"))
    assert reader.fields["general.architecture"].contents() == "qwen3"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "qwen2"
    assert reader.fields["qwen3.attention.key_length"].contents() == 128
    names = {t.name for t in reader.tensors}
    tied = json.loads((checkpoint / "config.json").read_text())["tie_word_embeddings"]
    assert ("output.weight" in names) is not tied
    assert {"blk.0.attn_q_norm.weight", "blk.1.ffn_down.weight", "output_norm.weight"} <= names
    norms = [t for t in reader.tensors if t.name.endswith("_norm.weight")]
    assert norms and all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in norms)


def test_rotary_halves_are_interleaved_per_head():
    heads, dim = 2, 4
    w = torch.arange(heads * dim, dtype=torch.float32)[:, None]
    # head 0 rows [0, 1 | 2, 3] become pairs (0, 2), (1, 3)
    assert interleave_rotary_halves(w, heads)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_pre_tokenizer_detection(smollm2):
    smol = json.loads((smollm2 / "tokenizer.json").read_text())
    assert detect_pre_tokenizer(smol) == "smollm"
    split = {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated"}
    byte_level = {"type": "ByteLevel", "use_regex": False}
    assert (
        detect_pre_tokenizer({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]}}) == "qwen2"
    )
    split["pattern"] = {"Regex": LLAMA3_SPLIT}
    assert (
        detect_pre_tokenizer({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]}})
        == "llama-bpe"
    )
    gpt2 = {"pre_tokenizer": {"type": "ByteLevel", "use_regex": True}, "model": {"vocab": {"12": 5, "a": 6}}}
    assert detect_pre_tokenizer(gpt2) == "gpt2"
    split["pattern"] = {"Regex": r"\w+"}
    with pytest.raises(TokenizerExportError, match="unrecognised pre-tokenizer split pattern"):
        detect_pre_tokenizer({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [split, byte_level]}})


def test_vocabulary_pads_rows_and_marks_special_tokens():
    data = {
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}},
        "added_tokens": [
            {"id": 2, "content": "<|im_end|>", "special": True},
            {"id": 3, "content": "<x>", "special": False},
        ],
    }
    tokens, types = vocabulary(data, rows=6)
    assert tokens == ["a", "b", "<|im_end|>", "<x>", "[PAD4]", "[PAD5]"]
    assert types == [1, 1, int(gguf.TokenType.CONTROL), int(gguf.TokenType.USER_DEFINED), 5, 5]
    with pytest.raises(TokenizerExportError, match="only 3 embedding rows"):
        vocabulary(data, rows=3)


def test_interrupted_conversion_leaves_no_file(smollm2, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = convert_module._encode

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(convert_module, "_encode", failing)
    with pytest.raises(KeyboardInterrupt):
        convert(smollm2, tmp_path / "model-F16.gguf", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ConversionError, match="GPT2LMHeadModel cannot be converted; supported: LlamaForCausalLM"):
        convert(tmp_path, tmp_path / "x.gguf")


def test_quantize_refuses_unknown_types_and_bad_input(tmp_path):
    with pytest.raises(QuantizationError, match="quant must be one of"):
        quantize(tmp_path / "in.gguf", tmp_path / "out.gguf", "Q3_K_S")
    (tmp_path / "in.gguf").write_bytes(b"not a gguf")
    with pytest.raises(QuantizationError, match="could not quantise"):
        quantize(tmp_path / "in.gguf", tmp_path / "out.gguf", "Q8_0", progress=False)
    assert not (tmp_path / "out.gguf").exists()


def test_tokenizer_of_smollm2_export_matches_hf(smollm2_export):
    from llama_cpp import Llama

    checkpoint, done = smollm2_export
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    llm = Llama(model_path=str(done.folder / done.results[-1].file), vocab_only=True, verbose=False)
    try:
        for text in ("Price: $1,234.56\n\ttabs", "<|im_start|>user\nHi<|im_end|>", "Ünïcödé — 數學 ✓ 12345"):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
    finally:
        llm.close()
