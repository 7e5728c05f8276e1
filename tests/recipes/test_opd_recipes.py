"""The OPD recipes: Axolotl accepts them with the plugin, every setting of the card is there, the
twin keeps the recipe's shape, and the twin lowers the student's reverse KL on held-out prompts."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from axolotl.cli.config import prepare_plugins
from axolotl.utils.config import validate_config
from axolotl.utils.dict import DictDefault

from tests.helpers import REPO

RECIPE = REPO / "yaml" / "opd.yml"
TWIN = REPO / "yaml" / "quickstart" / "opd.yml"
PLUGIN = "proofkd.plugin.OPDPlugin"
REWARD = "proofkd.plugin.opd.rewards.dapo_math_reward"


def validated(path) -> DictDefault:
    cfg = DictDefault(yaml.safe_load(path.read_text(encoding="utf-8")))
    prepare_plugins(cfg)
    return validate_config(cfg)


@pytest.fixture(scope="module")
def recipe() -> DictDefault:
    return validated(RECIPE)


def test_axolotl_validates_the_published_recipe_with_the_plugin(recipe):
    assert recipe.plugins == [PLUGIN]
    assert recipe.rl == "grpo"
    assert recipe.datasets[0]["path"] == "data/opd/train.jsonl"  # what `proofkd data build opd` writes


def test_every_setting_of_the_card_is_in_the_recipe(recipe):
    trl = recipe.trl
    assert recipe.base_model == "Qwen/Qwen3-1.7B-Base"
    assert recipe.proofkd_teacher == "lllyx/Qwen3-4B-Base-GRPO"
    assert recipe.proofkd_opd_estimator == "k1" and recipe.proofkd_opd_coef == 1.0
    assert trl.reward_funcs == [REWARD]
    assert trl.chat_template_kwargs == {"enable_thinking": False}
    assert trl.num_generations == 4
    assert trl.max_completion_length == 7168
    assert recipe.sequence_len == 8192
    assert trl.use_vllm is True
    # 64 prompts x 4 responses per rollout; mini-batches of 16 prompts (64 sequences) on 4 GPUs of micro-batch 1
    assert trl.generation_batch_size == 64 * 4
    assert recipe.micro_batch_size == 1
    assert recipe.gradient_accumulation_steps * 4 * recipe.micro_batch_size == 16 * 4
    assert recipe.learning_rate == 1e-6
    assert recipe.num_epochs == 1
    assert recipe.bf16 is True and recipe.gradient_checkpointing is True
    assert recipe.save_steps == 20


def test_the_twin_keeps_the_recipes_shape():
    raw = yaml.safe_load(TWIN.read_text(encoding="utf-8"))
    assert raw["base_model"].startswith("proofkd:smollm2-135m-instruct?layers=")
    assert raw["proofkd_teacher"] == "proofkd:smollm2-135m-instruct"
    assert raw["datasets"][0]["path"].startswith("proofkd:arith-dapo?split=train")
    twin, recipe = validated(TWIN), yaml.safe_load(RECIPE.read_text(encoding="utf-8"))  # resolves the references
    assert twin.plugins == [PLUGIN] and twin.rl == "grpo"
    for key in ("proofkd_opd_estimator", "proofkd_opd_coef", "proofkd_opd_clamp", "proofkd_opd_dual_clip"):
        assert twin[key] == recipe[key], key
    for key in ("num_generations", "num_iterations", "epsilon", "epsilon_high", "beta", "reward_funcs"):
        assert twin.trl[key] == recipe["trl"][key], key
    assert twin.trl.chat_template_kwargs == recipe["trl"]["chat_template_kwargs"]
    # more than one optimizer step per rollout, as the card's four
    per_step = twin.micro_batch_size * twin.gradient_accumulation_steps
    assert twin.trl.generation_batch_size // per_step > 1


@pytest.mark.slow
def test_the_cpu_twin_lowers_the_reverse_kl_on_heldout_prompts(tmp_path):
    from proofkd.cli.quickstart import run_opd

    summary = run_opd(TWIN, tmp_path, heldout="proofkd:arith-dapo?split=heldout&n=8&seed=0")
    before, after = summary["before"], summary["after"]
    assert after["reverse_kl"] < 0.9 * before["reverse_kl"], summary
    assert after["k1"] < before["k1"], summary

    records = [json.loads(line) for line in (tmp_path / "student" / "proofkd_log.jsonl").open()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert all(math.isfinite(r["loss"]) and "opd/clip_ratio/low" in r for r in steps)
    # 3 rollouts of 16 responses, 2 optimizer steps each: the rollout's diagnostics come with its first step
    rollouts = [r for r in steps if "opd/k1" in r]
    assert [r["step"] for r in rollouts] == [1, 3, 5]
    for record in rollouts:
        for key in ("opd/k2", "opd/k3", "opd/overlap_mass_student", "opd/overlap_mass_teacher"):
            assert key in record, (key, record)
        assert 0.0 <= record["opd/overlap_mass_teacher"] <= 1.0
        assert record["completions/mean_length"] > 0
        assert "rewards/dapo_math_reward/mean" in record
        # DAPO prompts carry no Proof: marker, so every sampled token is the answer's; no empty span is logged
        assert record["opd/answer/tokens"] > 0 and math.isfinite(record["opd/answer/k1"])
        assert not any(key.startswith("opd/derivation/") for key in record)
    # each rollout is sampled from the current student: the estimate falls from the first to the last
    assert rollouts[-1]["opd/k1"] < rollouts[0]["opd/k1"]
