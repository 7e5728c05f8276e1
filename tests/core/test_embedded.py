"""`proofkd:` references: parsing, errors, caching, and the layer-subset student."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from proofkd.core import embedded
from proofkd.core.embedded import EmbeddedReferenceError, evenly_spaced, parse_reference
from proofkd.core.io import atomic_path, cache_dir


def test_parse_reference():
    assert parse_reference("proofkd:smollm2-135m-instruct") == ("smollm2-135m-instruct", {})
    assert parse_reference("proofkd:stem-synthetic?split=heldout&n=5") == (
        "stem-synthetic",
        {"split": "heldout", "n": "5"},
    )
    assert not embedded.is_reference("Qwen/Qwen3-1.7B")
    assert not embedded.is_reference(None)


@pytest.mark.parametrize(
    "ref, message",
    [
        (
            "proofkd:nope",
            "unknown reference 'proofkd:nope'; known: proofkd:arith-dapo, proofkd:legal-sample, "
            "proofkd:qwen3-1.7b-base-slice, proofkd:qwen3-1.7b-slice, proofkd:qwen3-30b-a3b-slice, proofkd:qwen3-4b-base-slice, "
            "proofkd:qwen3-tokenizer, proofkd:smollm2-135m-instruct, proofkd:stem-synthetic",
        ),
        ("proofkd:smollm2-135m-instruct?layers=0", "layers must be between 1 and 30"),
        ("proofkd:smollm2-135m-instruct?layers=x", "layers='x' is not an integer"),
        ("proofkd:smollm2-135m-instruct?depth=3", "unknown parameter"),
        ("proofkd:stem-synthetic?split=dev", "split must be one of"),
        ("proofkd:stem-synthetic?n=1&n=2", "given 2 times"),
    ],
)
def test_bad_references_say_what_is_wrong(ref, message):
    with pytest.raises(EmbeddedReferenceError, match=re.escape(message)):
        embedded.resolve(ref)


def test_data_reference_is_written_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PROOFKD_CACHE", str(tmp_path / "cache"))
    path = embedded.resolve("proofkd:stem-synthetic?split=heldout&n=5&seed=2")
    assert path.parent.parent == cache_dir()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 5
    stamp = path.stat().st_mtime_ns
    assert embedded.resolve("proofkd:stem-synthetic?split=heldout&n=5&seed=2") == path
    assert path.stat().st_mtime_ns == stamp
    # no partial file is left beside the finished one, only the writers' lock
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".lock"]


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("PROOFKD_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "proofkd"
    monkeypatch.setenv("PROOFKD_CACHE", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"


def test_evenly_spaced_keeps_first_and_last():
    assert evenly_spaced(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert evenly_spaced(30, 30) == list(range(30))
    assert evenly_spaced(4, 2) == [0, 3]
    assert evenly_spaced(5, 1) == [4]


def test_layer_subset_copies_the_kept_layers_exactly(tiny, tmp_path):
    from proofkd.core.embedded import _write_layer_subset

    source = tiny["teacher"]  # 2 layers
    _write_layer_subset(source, tmp_path / "sub", 1)
    big = AutoModelForCausalLM.from_pretrained(source).state_dict()
    small = AutoModelForCausalLM.from_pretrained(tmp_path / "sub")
    assert small.config.num_hidden_layers == 1
    for key, value in small.state_dict().items():
        origin = key.replace("model.layers.0.", "model.layers.1.")
        assert torch.equal(value, big[origin]), key
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "sub").get_vocab() == AutoTokenizer.from_pretrained(source).get_vocab()
    )


def test_embedded_teacher_has_the_right_special_tokens(smollm2):
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.bos_token == "<|im_start|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2
    config = AutoModelForCausalLM.from_pretrained(smollm2).config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert config.eos_token_id == 2


def test_embedded_teacher_answers(smollm2):
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "5" in tokenizer.decode(out[0, prompt["input_ids"].shape[1] :])


def test_atomic_path_leaves_nothing_behind_on_failure(tmp_path):
    final = tmp_path / "thing"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_a_folder_whole(tmp_path):
    final = tmp_path / "folder"
    final.mkdir()
    (final / "old").write_text("old")
    with atomic_path(final) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new"]


def test_legal_sample_is_built_by_the_stage2_builder(tmp_path, monkeypatch):
    monkeypatch.setenv("PROOFKD_CACHE", str(tmp_path))
    train = [json.loads(x) for x in embedded.resolve("proofkd:legal-sample?split=train").read_text().splitlines()]
    heldout = [json.loads(x) for x in embedded.resolve("proofkd:legal-sample?split=eval").read_text().splitlines()]
    assert (len(train), len(heldout)) == (30, 2)
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in heldout}
    assert all(r["source"] == "Alignment-Lab-AI/Lawyer-Instruct" and r["input"] == "" for r in train + heldout)
