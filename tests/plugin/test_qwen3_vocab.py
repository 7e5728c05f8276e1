"""The teacher compatibility check at Qwen3's real vocabulary: 151,669 tokens over 151,936 rows."""

from __future__ import annotations

import re

import pytest
from transformers import AutoTokenizer

from proofkd.core import embedded, qwen3
from proofkd.plugin.teacher import TeacherMismatchError, check_compatible

ROWS = qwen3.VOCAB_ROWS


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    # the cache tests/core/test_qwen3.py builds into: the tokenizer is built once per session
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROOFKD_CACHE", str(tmp_path_factory.getbasetemp() / "qwen3-cache"))
        yield embedded.resolve("proofkd:qwen3-tokenizer")


@pytest.fixture(scope="module")
def tokenizer(qwen3_dir):
    return AutoTokenizer.from_pretrained(qwen3_dir)


class Edited:
    """The real tokenizer's vocabulary with one edit: what `check_compatible` reads (`get_vocab`, `len`)."""

    def __init__(self, tokenizer, edit):
        self.vocab = tokenizer.get_vocab()
        edit(self.vocab)

    def get_vocab(self):
        return dict(self.vocab)

    def __len__(self):
        return len(self.vocab)


def test_real_tokenizer_with_padded_rows_is_compatible(tokenizer):
    student_rows = qwen3.published_config("Qwen/Qwen3-1.7B").vocab_size
    teacher_rows = qwen3.published_config("Qwen/Qwen3-30B-A3B-Instruct-2507").vocab_size
    assert student_rows == teacher_rows == ROWS
    assert len(tokenizer) == 151_669 < ROWS
    assert check_compatible(tokenizer, tokenizer, student_rows, teacher_rows) == ROWS
    # the OPD pair: 1.7B-Base student, 4B teacher
    assert check_compatible(tokenizer, tokenizer, ROWS, qwen3.published_config("lllyx/Qwen3-4B-Base-GRPO").vocab_size)
    # the KL runs over the rows both have, as long as they cover every token
    assert check_compatible(tokenizer, tokenizer, ROWS, 151_669) == 151_669
    with pytest.raises(TeacherMismatchError, match="151669 tokens but the student's output layer has 151936 rows"):
        check_compatible(tokenizer, tokenizer, ROWS, 151_668)


def test_base_and_instruct_variants_are_one_tokenizer(tokenizer, qwen3_dir):
    # the OPD student is a base model (eos <|endoftext|>): only the eos differs, which the KL does not see
    base = AutoTokenizer.from_pretrained(qwen3_dir, eos_token="<|endoftext|>")
    assert base.eos_token_id == 151_643 != tokenizer.eos_token_id
    assert check_compatible(base, tokenizer, ROWS, ROWS) == ROWS


def _rename(old_id: int, new: str):
    def edit(vocab):
        (old,) = [k for k, v in vocab.items() if v == old_id]
        del vocab[old]
        vocab[new] = old_id
        edit.old = old

    return edit


@pytest.mark.parametrize("token_id", [151_668, 90_000], ids=["added token", "bpe token"])
def test_one_renamed_token_is_refused_by_name(tokenizer, token_id):
    edit = _rename(token_id, "proofkd_renamed")
    teacher = Edited(tokenizer, edit)
    assert len(teacher) == len(tokenizer)
    with pytest.raises(TeacherMismatchError) as error:
        check_compatible(tokenizer, teacher, ROWS, ROWS)
    message = str(error.value)
    assert f"{edit.old!r}->{token_id}" in message and f"'proofkd_renamed'->{token_id}" in message, message
    assert re.search(r"\b2 \(token, id\) pairs are not shared", message), message


def test_student_with_one_added_token_is_refused_by_name(tokenizer):
    student = Edited(tokenizer, lambda vocab: vocab.__setitem__("<|proof|>", 151_669))
    with pytest.raises(TeacherMismatchError) as error:
        check_compatible(student, tokenizer, ROWS, ROWS)
    message = str(error.value)
    assert "'<|proof|>'->151669" in message and "plus 1 added tokens" in message, message
