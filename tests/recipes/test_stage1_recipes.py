"""The Stage-1 recipes: Axolotl accepts them with the plugin, every published value is there,
and the CPU twin trains end to end."""

from __future__ import annotations

import math

import pytest
import yaml
from axolotl.cli.config import prepare_plugins
from axolotl.utils.config import validate_config
from axolotl.utils.dict import DictDefault

from proofkd.core.data.manifest import load_manifest
from tests.helpers import PLUGIN, REPO, STRATEGY, axolotl_train, read_log, train_records

RECIPE = REPO / "yaml" / "stage1_kd.yml"
TWIN = REPO / "yaml" / "quickstart" / "stage1_kd.yml"

# The model card's per-domain counts (they sum to 6,567).
CARD_DOMAINS = {
    "Physics": 2254,
    "Linear-Algebra": 667,
    "Differential-Equations": 636,
    "Electromagnetism": 580,
    "Mathematics": 576,
    "Engineering": 574,
    "Classical-Mechanics": 343,
    "Theoretical-Mechanics": 307,
    "Advanced-Calculus": 268,
    "Modern-Physics": 177,
    "Physiology": 114,
    "Molecular-Biology": 71,
}


def load(path) -> DictDefault:
    return DictDefault(yaml.safe_load(path.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def recipe() -> DictDefault:
    cfg = load(RECIPE)
    prepare_plugins(cfg)
    return validate_config(cfg)


def test_axolotl_validates_the_published_recipe_with_the_plugin(recipe):
    assert recipe.plugins == [PLUGIN]
    assert all(d["type"] == STRATEGY for d in recipe.datasets + recipe.test_datasets)
    # it reads what `proofkd data build stage1_kd` writes
    assert recipe.datasets[0]["path"] == "data/stage1_kd/train.jsonl"
    assert recipe.test_datasets[0]["path"] == "data/stage1_kd/eval.jsonl"
    assert recipe.val_set_size == 0


def test_every_published_stage1_value_is_in_the_recipe(recipe):
    assert recipe.base_model == "Qwen/Qwen3-1.7B"
    assert recipe.proofkd_teacher == "Qwen/Qwen3-30B-A3B-Instruct-2507"
    assert recipe.proofkd_temperature == 2.0
    assert (recipe.proofkd_ce_coef, recipe.proofkd_kd_coef) == (0.55, 0.45)
    assert (recipe.proofkd_proof_weight_start, recipe.proofkd_proof_weight_end) == (2.5, 1.5)
    assert recipe.proofkd_proof_weight_schedule == "linear"
    assert (recipe.proofkd_proof_start_marker, recipe.proofkd_proof_end_marker) == ("Proof:", "Final Answer:")
    assert recipe.seed == 42
    assert recipe.num_epochs == 1
    assert (recipe.micro_batch_size, recipe.gradient_accumulation_steps) == (1, 8)
    assert recipe.optimizer.startswith("adamw") and recipe.weight_decay == 0.01
    assert recipe.learning_rate == 1.5e-5 and recipe.lr_scheduler == "cosine"
    assert math.isclose(recipe.learning_rate * recipe.cosine_min_lr_ratio, 1e-6, rel_tol=1e-5)
    assert recipe.warmup_steps == 30
    assert recipe.max_grad_norm == 1.0
    assert recipe.bf16 is True and recipe.proofkd_teacher_dtype == "bfloat16"
    assert recipe.sequence_len == 1024
    assert recipe.train_on_inputs is True


def test_the_manifest_holds_the_twelve_sets_of_the_card():
    manifest = load_manifest("stage1_kd")
    found = {}
    for source in manifest.sources:
        domain, count = source.id.removeprefix("0xZee/dataset-CoT-").rsplit("-", 1)
        found[domain] = int(count)
        assert source.card_count == int(count) and source.split == "train"
    assert found == CARD_DOMAINS
    assert sum(found.values()) == 6567
    verified = {s.id for s in manifest.sources if s.verified}
    assert verified == {
        "0xZee/dataset-CoT-Physics-2254",
        "0xZee/dataset-CoT-Linear-Algebra-667",
        "0xZee/dataset-CoT-Differential-Equations-636",
        "0xZee/dataset-CoT-Advanced-Calculus-268",
    }
    assert (manifest.shuffle_seed, manifest.eval_fraction, manifest.expected_rows) == (42, 0.05, 6122)
    assert manifest.format == "stage1" and manifest.tokenizer == "Qwen/Qwen3-1.7B"


def test_split_sizes_match_the_card():
    # 95/5 of 6,122 rows: the eval split takes ceil(5%), as datasets' train_test_split does.
    manifest = load_manifest("stage1_kd")
    eval_rows = math.ceil(manifest.expected_rows * manifest.eval_fraction)
    assert (manifest.expected_rows - eval_rows, eval_rows) == (5815, 307)


def test_the_cpu_twin_uses_the_same_loss_and_template():
    recipe, twin = load(RECIPE), load(TWIN)
    for key in (
        "plugins",
        "proofkd_temperature",
        "proofkd_ce_coef",
        "proofkd_kd_coef",
        "proofkd_proof_weight_start",
        "proofkd_proof_weight_end",
        "proofkd_proof_weight_schedule",
        "train_on_inputs",
        "seed",
        "val_set_size",
        "lr_scheduler",
        "weight_decay",
        "max_grad_norm",
    ):
        assert twin[key] == recipe[key], key
    assert all(d["type"] == STRATEGY for d in twin.datasets + twin.test_datasets)
    assert twin.proofkd_teacher == "proofkd:smollm2-135m-instruct"


@pytest.mark.slow
def test_the_cpu_twin_trains_end_to_end(tmp_path):
    code, output = axolotl_train(
        TWIN,
        tmp_path,
        "--max-steps",
        "2",
        "--eval-steps",
        "2",
        "--output-dir",
        str(tmp_path / "out"),
        "--dataset-prepared-path",
        str(tmp_path / "prepared"),
    )
    assert code == 0, output[-6000:]
    records = train_records(tmp_path / "out")
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["proofkd/proof_weight"] == 2.5 and records[1]["proofkd/proof_weight"] == 1.5
    evals = [r for r in read_log(tmp_path / "out") if "eval_loss" in r]
    assert evals[-1]["eval_proofkd/kl"] < evals[0]["eval_proofkd/kl"]
    assert (tmp_path / "out" / "model.safetensors").is_file()
