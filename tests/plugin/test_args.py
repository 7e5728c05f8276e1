"""The plugin's keys, validated by Axolotl itself: defaults, and errors that name the key and the fix."""

from __future__ import annotations

import pytest
from axolotl.cli.config import prepare_plugins
from axolotl.utils.config import validate_config
from axolotl.utils.dict import DictDefault

from proofkd.plugin.trainer import ProofKDConfig
from tests.helpers import PLUGIN, STRATEGY


def base_cfg(**overrides) -> DictDefault:
    cfg = {
        "base_model": "student",
        "plugins": [PLUGIN],
        "proofkd_teacher": "teacher",
        "datasets": [{"path": "rows.jsonl", "ds_type": "json", "type": STRATEGY}],
        "micro_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-5,
        "num_epochs": 1,
        "sequence_len": 128,
        "output_dir": "out",
    }
    cfg.update(overrides)
    return DictDefault(cfg)


def validate(**overrides) -> DictDefault:
    cfg = base_cfg(**overrides)
    prepare_plugins(cfg)
    return validate_config(cfg)


def test_defaults_are_the_published_recipe():
    cfg = validate()
    assert cfg.proofkd_temperature == 2.0
    assert (cfg.proofkd_ce_coef, cfg.proofkd_kd_coef) == (0.55, 0.45)
    assert (cfg.proofkd_proof_weight_start, cfg.proofkd_proof_weight_end) == (2.5, 1.5)
    assert cfg.proofkd_proof_weight_schedule == "linear"
    assert (cfg.proofkd_proof_start_marker, cfg.proofkd_proof_end_marker) == ("Proof:", "Final Answer:")
    assert cfg.proofkd_ce_normalization == "weights"
    assert cfg.proofkd_teacher_device == "auto" and cfg.proofkd_teacher_dtype == "auto"


def test_prepared_dataset_folder_is_keyed_on_the_markers(tmp_path):
    a = validate(dataset_prepared_path=str(tmp_path))
    b = validate(dataset_prepared_path=str(tmp_path), proofkd_proof_end_marker="Answer:")
    assert a.dataset_prepared_path.startswith(str(tmp_path) + "/proofkd-")
    assert a.dataset_prepared_path != b.dataset_prepared_path


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"proofkd_temperature": 0}, "proofkd_temperature must be > 0"),
        ({"proofkd_kd_coef": -0.1}, "proofkd_kd_coef must be >= 0"),
        ({"proofkd_proof_weight_end": -1}, "proofkd_proof_weight_end must be >= 0"),
        ({"proofkd_chunk_size": 0}, "proofkd_chunk_size must be a positive number"),
        ({"proofkd_teacher_device": "gpu0"}, "use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ({"proofkd_proof_weight_schedule": "step"}, "proofkd_proof_weight_schedule"),
        ({"proofkd_teacher": None}, "proofkd_teacher is not set: name the teacher model"),
        ({"proofkd_ce_coef": 0, "proofkd_kd_coef": 0}, "both 0: nothing would be optimised"),
        ({"proofkd_proof_end_marker": "Proof:"}, "must be two different non-empty strings"),
        ({"sample_packing": True}, "sample_packing: true is not supported"),
        ({"proofkd_teacher_load_in_8bit": True, "proofkd_teacher_device": "cpu"}, "needs a CUDA device"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(Exception, match=message):
        validate(**overrides)


def test_teacher_free_weighted_ce_needs_no_teacher():
    cfg = validate(proofkd_teacher=None, proofkd_kd_coef=0.0, proofkd_ce_coef=1.0)
    assert cfg.proofkd_kd_coef == 0.0


def test_teacher_kwargs_pass_through():
    cfg = validate(proofkd_teacher_kwargs={"experts_implementation": "grouped_mm"})
    assert cfg.proofkd_teacher_kwargs == {"experts_implementation": "grouped_mm"}


# --- OPDPlugin ---------------------------------------------------------------------------------

OPD_PLUGIN = "proofkd.plugin.OPDPlugin"


def validate_opd(**overrides) -> DictDefault:
    trl = {"num_generations": 4, "reward_funcs": ["proofkd.plugin.opd.rewards.dapo_math_reward"]}
    trl.update(overrides.pop("trl", {}))
    cfg = {
        "base_model": "student",
        "plugins": [OPD_PLUGIN],
        "rl": "grpo",
        "proofkd_teacher": "teacher",
        "trl": trl,
        "datasets": [{"path": "prompts.jsonl", "ds_type": "json", "split": "train"}],
        "skip_prepare_dataset": True,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-6,
        "num_epochs": 1,
        "sequence_len": 512,
        "output_dir": "out",
    }
    cfg.update(overrides)
    cfg = DictDefault(cfg)
    prepare_plugins(cfg)
    return validate_config(cfg)


def test_opd_defaults_are_the_published_recipe():
    cfg = validate_opd()
    assert (cfg.proofkd_opd_estimator, cfg.proofkd_opd_clamp, cfg.proofkd_opd_coef) == ("k1", 10.0, 1.0)
    assert (cfg.proofkd_opd_dual_clip, cfg.proofkd_opd_task_coef) == (3.0, 0.0)
    assert cfg.proofkd_teacher_server is None


def test_a_server_teacher_stands_in_for_the_in_process_one():
    cfg = validate_opd(proofkd_teacher=None, proofkd_teacher_server="http://teacher:8000/v1")
    assert cfg.proofkd_teacher_server == "http://teacher:8000/v1"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"proofkd_opd_estimator": "k4"}, "proofkd_opd_estimator"),
        ({"proofkd_opd_advantage_from": "sampler"}, "proofkd_opd_advantage_from"),
        ({"proofkd_opd_clamp": 0}, "proofkd_opd_clamp must be > 0"),
        ({"proofkd_opd_coef": -1}, "proofkd_opd_coef must be >= 0"),
        ({"proofkd_opd_dual_clip": 0.5}, "proofkd_opd_dual_clip must be > 1"),
        ({"proofkd_opd_coef": 0}, "both 0: nothing would be optimised"),
        ({"proofkd_teacher": None}, "proofkd_teacher is not set.*proofkd_teacher_server"),
        ({"rl": None}, "set rl: grpo"),
        ({"trl": {"temperature": 0.7}}, "set trl.temperature: 1.0"),
        ({"trl": {"beta": 0.04}}, "set trl.beta: 0"),
        ({"trl": {"reward_funcs": []}}, "trl.reward_funcs is empty"),
        ({"proofkd_teacher_server_retries": 0}, "proofkd_teacher_server_retries"),
    ],
)
def test_bad_opd_values_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(Exception, match=message):
        validate_opd(**overrides)


def test_stage1_takes_a_server_teacher_and_refuses_rl():
    cfg = validate(proofkd_teacher=None, proofkd_teacher_server="http://teacher:8000/v1")
    assert cfg.proofkd_teacher_topk == 20
    with pytest.raises(Exception, match="proofkd_teacher_topk must be > 0"):
        validate(proofkd_teacher_server="http://teacher:8000/v1", proofkd_teacher_topk=0)
    with pytest.raises(Exception, match="list proofkd.plugin.OPDPlugin instead"):
        validate(rl="grpo")


# --- one definition per key ------------------------------------------------------------------


def test_the_new_stage1_keys_and_their_defaults():
    cfg = validate()
    assert (cfg.proofkd_divergence, cfg.proofkd_jsd_beta) == ("forward_kl", 0.5)
    assert cfg.proofkd_compile_loss_head is True
    cfg = validate(proofkd_divergence="jsd", proofkd_jsd_beta=0.9, proofkd_compile_loss_head=False)
    assert (cfg.proofkd_divergence, cfg.proofkd_jsd_beta, cfg.proofkd_compile_loss_head) == ("jsd", 0.9, False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"proofkd_divergence": "kl"}, "proofkd_divergence"),
        ({"proofkd_jsd_beta": 1.5}, "proofkd_jsd_beta must be <= 1"),
        ({"proofkd_jsd_beta": -0.1}, "proofkd_jsd_beta must be >= 0"),
        ({"proofkd_temperature": -1}, "the published recipe uses 2.0"),
        ({"proofkd_chunk_size": 0}, "or leave it unset"),
        (
            {"proofkd_teacher_server": "http://teacher:8000/v1", "proofkd_divergence": "reverse_kl"},
            "proofkd_divergence: reverse_kl cannot run on proofkd_teacher_server.*"
            "use proofkd_divergence: forward_kl or jsd",
        ),
        (
            {"proofkd_teacher_server": "http://teacher:8000/v1", "proofkd_divergence": "jsd", "proofkd_jsd_beta": 1.0},
            "proofkd_divergence: jsd with proofkd_jsd_beta: 1 .reverse_kl. cannot run on proofkd_teacher_server",
        ),
        (
            {"proofkd_teacher_cache": "cache", "proofkd_divergence": "reverse_kl"},
            "proofkd_divergence: reverse_kl cannot run on proofkd_teacher_cache",
        ),
    ],
)
def test_bad_divergence_settings_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(Exception, match=message):
        validate(**overrides)


def test_a_served_teachers_tail_is_a_bucket_unless_renormalising_is_asked_for():
    server = {"proofkd_teacher": None, "proofkd_teacher_server": "http://teacher:8000/v1"}
    assert ProofKDConfig.from_cfg(validate(**server)).topk_tail == "bucket"
    cfg = validate(**server, proofkd_teacher_topk_tail="renormalize")
    assert ProofKDConfig.from_cfg(cfg).topk_tail == "renormalize"
    with pytest.raises(Exception, match="proofkd_teacher_topk_tail"):
        validate(**server, proofkd_teacher_topk_tail="drop")


def test_divergences_other_than_reverse_kl_run_on_a_teacher_server():
    server = {"proofkd_teacher": None, "proofkd_teacher_server": "http://teacher:8000/v1"}
    assert validate(**server, proofkd_divergence="jsd").proofkd_divergence == "jsd"
    assert validate(**server).proofkd_divergence == "forward_kl"


def test_an_unknown_key_is_refused_with_the_closest_one_named():
    with pytest.raises(Exception, match="proofkd_temprature is not a proofkd key: did you mean proofkd_temperature"):
        validate(proofkd_temprature=5.0)
    closest = "proofkd_teacher_sever is not a proofkd key: did you mean proofkd_teacher_server"
    with pytest.raises(Exception, match=closest):
        validate_opd(proofkd_teacher_sever="http://teacher:8000/v1")


def test_a_key_of_the_other_plugin_is_named_as_such():
    with pytest.raises(Exception, match="proofkd_temperature is a key of proofkd.plugin.ProofKDPlugin"):
        validate_opd(proofkd_temperature=2.0)
    with pytest.raises(Exception, match="proofkd_opd_clamp is a key of proofkd.plugin.OPDPlugin"):
        validate(proofkd_opd_clamp=10.0)
    with pytest.raises(Exception, match="the closest, proofkd_opd_estimator, is a key of proofkd.plugin.OPDPlugin"):
        validate(proofkd_opd_estimater="k1")


def test_every_key_is_declared_once_with_a_description():
    from proofkd.plugin.args import OPDArgs, ProofKDArgs, TeacherArgs

    for model in (TeacherArgs, ProofKDArgs, OPDArgs):
        for name, field in model.model_fields.items():
            assert name.startswith("proofkd_"), name
            assert field.description and "\n" not in field.description, name
    assert not set(ProofKDArgs.model_fields) - set(TeacherArgs.model_fields) & set(OPDArgs.model_fields)


def test_the_divergences_a_recipe_can_name_are_the_registered_ones(monkeypatch):
    from proofkd.plugin.loss import divergences

    for name in divergences.DIVERGENCES:
        assert validate(proofkd_divergence=name).proofkd_divergence == name
    monkeypatch.setitem(divergences.DIVERGENCES, "added_for_test", divergences.DIVERGENCES["forward_kl"])
    assert validate(proofkd_divergence="added_for_test").proofkd_divergence == "added_for_test"


def test_a_run_from_a_teacher_cache_does_not_need_the_teacher_folder(tmp_path):
    missing = str(tmp_path / "teacher-elsewhere")
    with pytest.raises(Exception, match="no folder .* exists here"):
        validate(proofkd_teacher=missing)
    assert validate(proofkd_teacher=missing, proofkd_teacher_cache=str(tmp_path / "cache")).proofkd_teacher == missing


def test_an_output_dir_that_cannot_be_written_is_refused_at_validation(tmp_path, monkeypatch):
    import os

    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(Exception, match=r"output_dir .*notes.txt/run: .*notes.txt is a file, not a folder"):
        validate(output_dir=str(tmp_path / "notes.txt" / "run"))
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(locked) else real_access(path, mode))
    with pytest.raises(Exception, match="is not writable by this user. Pass an output_dir you can write to"):
        validate(output_dir=str(locked / "run"))
    assert validate(output_dir=str(tmp_path / "fine" / "run")).output_dir.endswith("fine/run")
