"""`proofkd plan`: parameter counts, the per-layer activation count against autograd, placements, 8-bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from proofkd.cli import main
from proofkd.plugin import plan as mp

GB = 1e9


@pytest.fixture(scope="module")
def stage1_h100():
    return mp.plan("stage1_kd", "h100-80gb", 2)


def test_parameter_counts_of_the_published_models(stage1_h100):
    student, teacher = stage1_h100.student, stage1_h100.teacher
    assert student.params == 1_720_574_976  # Qwen3-1.7B: 1.7B, 1.4B without the (tied) embeddings
    assert student.params - student.vocab_rows * student.hidden == pytest.approx(1.4e9, rel=0.01)
    assert teacher.params == pytest.approx(30.5e9, rel=0.005)  # the card: 30.5B
    assert teacher.weight_bytes() / GB == pytest.approx(61, rel=0.005)  # FACTS: 61 GB in bf16
    assert (student.tied, teacher.tied, teacher.experts) == (True, False, 128)


def test_stage1_placements(stage1_h100):
    verdicts = {label: why for label, _, why in stage1_h100.placements}
    assert verdicts["second GPU, bf16"].startswith("fits")
    assert verdicts["server (vLLM elsewhere)"].startswith("fits")
    assert verdicts["same GPU, bf16, if the moments were float32"].startswith("does not fit")
    h200 = {label: why for label, _, why in mp.plan("stage1_kd", "h200-141gb").placements}
    assert h200["same GPU, bf16"].startswith("fits")
    assert h200["second GPU, bf16"] == "needs --gpus 2"
    # the teacher's 8-bit form saves only its attention: the experts are not nn.Linear
    saved = stage1_h100.item("teacher weights, bf16") - stage1_h100.item("teacher weights, 8-bit")
    assert 0 < saved < 0.02 * stage1_h100.item("teacher weights, bf16")
    assert stage1_h100.item("activations, gradient checkpointing (recipe)") < stage1_h100.item(
        "activations, no checkpointing"
    )


def _tiny_qwen3(moe: bool = False):
    from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3MoeConfig

    common = dict(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16
    )
    if moe:
        config = Qwen3MoeConfig(**common, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2)
    else:
        config = Qwen3Config(**common, intermediate_size=96)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return config, AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def test_layer_activation_bytes_match_what_autograd_saves(tmp_path):
    config, model = _tiny_qwen3()
    config.save_pretrained(tmp_path)
    shape = mp.model_shape(str(tmp_path))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    current, seen, sums = ["outside"], set(), {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in params and key not in seen:
            seen.add(key)
            sums[current[0]] = sums.get(current[0], 0) + t.untyped_storage().nbytes()
        return t

    for i, layer in enumerate(model.model.layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i))
        layer.register_forward_hook(lambda m, a, o: current.__setitem__(0, "outside"))
    tokens = 24
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.model(input_ids=torch.randint(0, 256, (1, tokens))).last_hidden_state.sum()
    rotary = 2 * 2 * shape.head_dim * tokens  # cos and sin, saved in the first layer, shared by the rest
    assert sums[0] - rotary == sums[1] == mp.layer_activation_bytes(shape) * tokens
    assert sums["outside"] + rotary == mp.outside_activation_bytes(shape) * tokens


def test_int8_counts_what_bitsandbytes_replaces(tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear

    config, _ = _tiny_qwen3(moe=True)
    config.save_pretrained(tmp_path)
    shape = mp.model_shape(str(tmp_path))
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    replace_with_bnb_linear(
        model, modules_to_not_convert=["lm_head"], quantization_config=BitsAndBytesConfig(load_in_8bit=True)
    )
    replaced = [m for m in model.modules() if type(m).__name__ == "Linear8bitLt"]
    assert sum(m.weight.numel() for m in replaced) == shape.linear_params > 0
    assert sum(m.out_features for m in replaced) == shape.linear_rows
    # the experts (3-D parameters) and the router stay as they were
    assert all(type(m) is not nn.Linear for m in model.modules() if "experts" in type(m).__name__.lower())
    experts = model.model.layers[0].mlp.experts
    assert experts.gate_up_proj.dtype != torch.int8


def test_cli_prints_the_plan(capsys):
    assert main(["plan", "opd", "--gpu", "h100-80gb"]) == 0
    out = capsys.readouterr().out
    assert "| student weights | 3.20 |" in out and "| teacher placement |" in out and "vLLM colocated" in out
    assert main(["plan", "nope", "--gpu", "h100-80gb"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
