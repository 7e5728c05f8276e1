"""Collator, output heads, teacher compatibility, step totals and the Axolotl prompt strategy."""

from __future__ import annotations

import pytest
import torch
from axolotl.utils.dict import DictDefault
from transformers import AutoModelForCausalLM, AutoTokenizer

from proofkd.core.data.stem import generate
from proofkd.core.tokenize import tokenize_stage1
from proofkd.plugin.collator import ProofSpanCollator
from proofkd.plugin.heads import UnsupportedHeadError, final_hidden_states, head_replaced, verify_linear_head
from proofkd.plugin.teacher import (
    TeacherMismatchError,
    TeacherOutputError,
    TeacherTargets,
    check_compatible,
    check_finite,
)
from proofkd.plugin.trainer import StepTotals, shifted_counts
from tests.helpers import PLUGIN, make_model


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return AutoTokenizer.from_pretrained(tiny["tokenizer"])


def features(tokenizer, n=3):
    rows = generate("train", n, seed=21)
    return [
        tokenize_stage1(tokenizer, r["question"], r["CoT"], r["response"], sequence_len=64 + 40 * i)
        for i, r in enumerate(rows)
    ]


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_pads_the_mask_like_the_tokens(tokenizer, side):
    tokenizer.padding_side = side
    rows = features(tokenizer)
    batch = ProofSpanCollator(tokenizer, padding=True, return_tensors="pt")(rows)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "proof_mask"}
    assert batch["proof_mask"].shape == batch["input_ids"].shape
    for i, row in enumerate(rows):
        real = batch["attention_mask"][i].bool()
        assert batch["proof_mask"][i][real].tolist() == row["proof_mask"]
        assert batch["proof_mask"][i][~real].sum() == 0
        assert (batch["labels"][i][~real] == -100).all()
    tokenizer.padding_side = "right"


def test_collator_refuses_rows_without_a_mask(tokenizer):
    rows = features(tokenizer)
    del rows[1]["proof_mask"]
    with pytest.raises(KeyError, match="no proof_mask"):
        ProofSpanCollator(tokenizer, padding=True, return_tensors="pt")(rows)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_final_hidden_states_are_what_the_head_sees(tiny, tmp_path, arch):
    path = make_model(tmp_path / arch, tiny["tokenizer"], hidden=32, layers=2, seed=3, arch=arch)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.randint(0, 600, (2, 9))
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        hidden = final_hidden_states(model, input_ids=ids)
    assert torch.allclose(hidden, out.hidden_states[-1], atol=1e-6)
    assert torch.allclose(hidden @ model.lm_head.weight.T, out.logits, atol=1e-5)
    verify_linear_head(model, ids)


def test_head_is_restored_even_when_the_forward_fails(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny["student"])

    def boom(head, hidden):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), head_replaced(model, boom):
        model(input_ids=torch.tensor([[1, 2, 3]]))
    assert "forward" not in vars(model.lm_head)
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 640)


def test_heads_that_are_not_a_plain_linear_map_are_refused(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny["student"])
    original = type(model).forward

    def softcapped(self, *args, **kwargs):  # what Gemma-style logit softcapping does after the head
        out = original(self, *args, **kwargs)
        out.logits = 30.0 * torch.tanh(out.logits / 30.0) + 1.0
        return out

    model.forward = softcapped.__get__(model)
    with pytest.raises(UnsupportedHeadError, match="plain linear output layer"):
        verify_linear_head(model, torch.tensor([[1, 2, 3, 4]]))


def test_head_with_bias_is_refused(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny["student"])
    head = torch.nn.Linear(32, 640, bias=True)
    head.weight = model.lm_head.weight
    torch.nn.init.normal_(head.bias)
    model.lm_head = head
    with pytest.raises(UnsupportedHeadError):
        verify_linear_head(model, torch.tensor([[1, 2, 3, 4]]))


def test_teacher_with_the_same_tokenizer_and_padded_rows_is_accepted(tokenizer):
    assert check_compatible(tokenizer, tokenizer, student_rows=640, teacher_rows=640) == 640
    assert check_compatible(tokenizer, tokenizer, student_rows=640, teacher_rows=608) == 608


def test_teacher_with_another_tokenizer_is_refused(tokenizer, smollm2):
    other = AutoTokenizer.from_pretrained(smollm2)
    with pytest.raises(
        TeacherMismatchError, match="tokenizers differ .*pick a teacher from the student's model family"
    ):
        check_compatible(tokenizer, other, student_rows=640, teacher_rows=49152)


def test_a_student_tokenizer_with_added_tokens_says_what_it_adds(tiny, tokenizer):
    student = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    student.add_tokens(["<|extra_a|>", "<|extra_b|>"])
    with pytest.raises(TeacherMismatchError, match="tokenizers differ .*the teacher's plus 2 added tokens") as info:
        check_compatible(student, tokenizer, student_rows=640, teacher_rows=640)
    assert "model family" not in str(info.value)


def test_a_teacher_tokenizer_with_added_tokens_says_how_to_give_them_to_the_student(tiny, tokenizer):
    teacher = AutoTokenizer.from_pretrained(tiny["tokenizer"])
    teacher.add_tokens([f"<|teacher_{i}|>" for i in range(100)])
    first = len(tokenizer)
    with pytest.raises(TeacherMismatchError, match=f"the student's plus 100 added tokens \\(ids {first} to") as info:
        check_compatible(tokenizer, teacher, student_rows=640, teacher_rows=640)
    assert "recipe's tokens:" in str(info.value) and "model family" not in str(info.value)


def test_vocabulary_rows_short_of_the_tokenizer_are_refused(tokenizer):
    with pytest.raises(
        TeacherMismatchError, match="600 tokens but the student's output layer has 640 rows and the teacher's 512"
    ):
        check_compatible(tokenizer, tokenizer, student_rows=640, teacher_rows=512)


def test_step_totals_count_shifted_valid_and_derivation_tokens():
    batch = {
        "labels": torch.tensor([[5, 6, 7, -100], [-100, 8, 9, 10]]),
        "proof_mask": torch.tensor([[0, 1, 1, 0], [1, 1, 0, 1]]),
    }
    # predicted positions are 1..3: labels [6, 7, -100] with mask [1, 1, 0], and [8, 9, 10] with [1, 0, 1]
    assert shifted_counts(batch).tolist() == [5, 4]
    totals = StepTotals(tokens=torch.tensor(5.0), proof_tokens=torch.tensor(4.0), across_processes=1)
    d_ce, d_kd = totals.denominators(2.5, "weights")
    assert (d_ce.item(), d_kd.item()) == (5 + 1.5 * 4, 5)
    assert totals.denominators(2.5, "tokens")[0].item() == 5


def test_strategy_refuses_to_run_without_its_plugin(tokenizer):
    from proofkd.plugin.prompt_strategies.stage1 import load

    with pytest.raises(ValueError, match=r"needs its plugin: add `plugins: \[proofkd.plugin.ProofKDPlugin\]`"):
        load(tokenizer, DictDefault({"plugins": [], "sequence_len": 64}))


def test_strategy_tokenizes_batches_and_names_missing_columns(tokenizer):
    from axolotl.cli.config import prepare_plugins

    from proofkd.plugin.prompt_strategies.stage1 import load

    cfg = DictDefault({"plugins": [PLUGIN], "sequence_len": 256, "train_on_inputs": True, "base_model": "x"})
    prepare_plugins(cfg)
    strategy = load(tokenizer, cfg)
    rows = generate("train", 3, seed=2)
    batch = {k: [r[k] for r in rows] for k in ("question", "CoT", "response")}
    out = strategy.tokenize_prompt(batch)
    assert set(out) == {"input_ids", "attention_mask", "labels", "proof_mask", "proofkd_span_status"}
    assert len(out["input_ids"]) == 3
    with pytest.raises(KeyError, match=r"lacks \['CoT'\]"):
        strategy.tokenize_prompt({"question": ["q"], "response": ["r"]})


@pytest.mark.parametrize("form", ["full", "topk"])
def test_nan_or_inf_from_the_teacher_stops_training_naming_the_row(seed, form):
    gen = torch.Generator().manual_seed(seed)
    rows, length = 3, 5
    read = torch.ones(rows * length, dtype=torch.bool)
    read[:length] = False  # row 0 is padding: the loss never reads it
    if form == "full":
        values, bad = torch.randn(rows * length, 4, generator=gen), float("nan")
        weight = torch.randn(7, 4, generator=gen)
    else:
        values, bad = torch.randn(rows * length, 3, generator=gen).log_softmax(-1), float("inf")
        values[:, -1] = -torch.inf  # an unused slot is not an error
        ids = torch.zeros_like(values, dtype=torch.long)

    def check():
        if form == "full":
            check_finite(TeacherTargets(hidden=values, weight=weight), read, length, "step 3")
        else:
            check_finite(TeacherTargets(topk_ids=ids, topk_logps=values), read, length, "step 3")

    check()
    values[2, 0] = bad  # in the padding row: ignored
    check()
    values[length + 3, 1] = bad
    values[2 * length, 0] = bad
    with pytest.raises(TeacherOutputError, match=r"step 3: .* row 1, position 3 .*\(2 such tokens\).*bfloat16"):
        check()
