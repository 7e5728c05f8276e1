"""The Stage-2 recipes: every published value, and the CPU twin trained after the Stage-1 twin."""

from __future__ import annotations

import json

import pytest
import yaml
from axolotl.utils.config import validate_config
from axolotl.utils.dict import DictDefault

from proofkd.core.data.manifest import load_manifest
from tests.helpers import REPO, axolotl_train

RECIPE = REPO / "yaml" / "stage2_sft.yml"
TWIN = REPO / "yaml" / "quickstart" / "stage2_sft.yml"
STAGE1_TWIN = REPO / "yaml" / "quickstart" / "stage1_kd.yml"
STRATEGY = "proofkd.plugin.prompt_strategies.stage2"


def load(path) -> DictDefault:
    return DictDefault(yaml.safe_load(path.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def recipe() -> DictDefault:
    return validate_config(load(RECIPE))


def test_every_published_stage2_value_is_in_the_recipe(recipe):
    assert recipe.base_model == "./outputs/stage1_kd"
    assert [d["type"] for d in recipe.datasets + recipe.test_datasets] == [STRATEGY, STRATEGY]
    assert recipe.datasets[0]["path"] == "data/stage2_sft/train.jsonl"
    assert recipe.num_epochs == 1
    assert (recipe.micro_batch_size, recipe.gradient_accumulation_steps) == (2, 4)
    assert recipe.optimizer.startswith("adamw") and recipe.weight_decay == 0.01
    assert recipe.learning_rate == 5e-6 and recipe.lr_scheduler == "cosine" and recipe.warmup_steps == 30
    assert recipe.max_grad_norm == 1.0
    assert recipe.sequence_len == 1024
    assert recipe.gradient_checkpointing is True and recipe.bf16 is True
    assert recipe.eval_steps == 200 and recipe.save_steps % recipe.eval_steps == 0
    assert recipe.load_best_model_at_end is True
    assert recipe.metric_for_best_model == "eval_loss" and recipe.greater_is_better is False
    assert recipe.train_on_inputs is True
    assert not recipe.plugins


def test_the_manifest_is_lawyer_instruct_split_95_5():
    manifest = load_manifest("stage2_sft")
    assert [s.id for s in manifest.sources] == ["Alignment-Lab-AI/Lawyer-Instruct"]
    assert manifest.sources[0].card_count == 9241
    assert (manifest.format, manifest.eval_fraction, manifest.sequence_len) == ("stage2", 0.05, 1024)


def test_the_twin_keeps_the_recipes_shape():
    recipe, twin = load(RECIPE), load(TWIN)
    for key in (
        "micro_batch_size",
        "gradient_accumulation_steps",
        "weight_decay",
        "lr_scheduler",
        "max_grad_norm",
        "gradient_checkpointing",
        "train_on_inputs",
        "load_best_model_at_end",
        "metric_for_best_model",
        "greater_is_better",
        "val_set_size",
    ):
        assert twin[key] == recipe[key], key
    assert twin.save_steps % twin.eval_steps == 0
    assert twin.base_model == load(STAGE1_TWIN).output_dir
    assert [d["type"] for d in twin.datasets + twin.test_datasets] == [STRATEGY, STRATEGY]


def test_the_stage2_format_is_tokenised_whole(smollm2):
    from transformers import AutoTokenizer

    from proofkd.core.tokenize import tokenize_stage2

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    row = tokenize_stage2(tokenizer, "Define tort.", "", "A civil wrong.", sequence_len=64)
    text = tokenizer.decode(row["input_ids"])
    assert text == "### Instruction:\nDefine tort.\n### Response:\nA civil wrong.<|im_end|>"
    masked = tokenize_stage2(tokenizer, "Define tort.", "", "A civil wrong.", sequence_len=64, train_on_inputs=False)
    trained = [t for t, lab in zip(masked["input_ids"], masked["labels"], strict=True) if lab != -100]
    assert tokenizer.decode(trained) == "A civil wrong.<|im_end|>"


@pytest.mark.slow
def test_stage2_twin_trains_on_the_stage1_twins_student(tmp_path):
    stage1 = tmp_path / "stage1"
    code, output = axolotl_train(
        STAGE1_TWIN,
        tmp_path,
        "--max-steps",
        "2",
        "--eval-steps",
        "2",
        "--output-dir",
        str(stage1),
        "--dataset-prepared-path",
        str(tmp_path / "prepared1"),
    )
    assert code == 0, output[-5000:]
    stage2 = tmp_path / "stage2"
    code, output = axolotl_train(
        TWIN,
        tmp_path,
        "--base-model",
        str(stage1),
        "--output-dir",
        str(stage2),
        "--dataset-prepared-path",
        str(tmp_path / "prepared2"),
    )
    assert code == 0, output[-5000:]
    assert (stage2 / "model.safetensors").is_file()
    checkpoints = sorted(stage2.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    evals = [r["eval_loss"] for r in state["log_history"] if "eval_loss" in r]
    assert len(evals) >= 2 and evals[-1] < evals[0]
    assert state["best_metric"] == pytest.approx(min(evals[1:]))
    assert state["best_model_checkpoint"]
