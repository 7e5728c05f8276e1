"""`proofkd rehearse`: what it changes in each published recipe, and that it changes nothing else.

The overrides are computed and applied with `proofkd:` references left unresolved (resolving one would
materialise a real-width slice), so these run in a moment; the rehearsals themselves, at real width, are
in docs/results.md with the command that ran them.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from proofkd.cli import main, rehearse
from proofkd.core.recipes import read_recipe

OUT = Path("outputs/rehearse/x")


@pytest.fixture
def unresolved(monkeypatch):
    """References stay references: `rehearsal_config` then shows what a rehearsal would resolve."""
    monkeypatch.setattr(rehearse.embedded, "resolve", lambda ref: Path(f"/cache/{ref}"))


def rehearsed(name: str, steps: int = 2) -> tuple[dict, dict, dict[str, rehearse.Override]]:
    cfg = read_recipe(name)[1]
    changes = rehearse.overrides(cfg, steps, OUT)
    return cfg, rehearse.rehearsal_config(cfg, changes), {c.key: c for c in changes}


def without(cfg: dict, keys: set[str]) -> dict:
    """`cfg` with the dotted `keys` removed (list entries by index: datasets.0.path)."""
    cfg = copy.deepcopy(cfg)
    for key in keys:
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.get(part, {})
        if isinstance(node, dict):
            node.pop(last, None)
    return cfg


@pytest.mark.parametrize(
    "name, student, teacher",
    [
        ("stage1_kd", "proofkd:qwen3-1.7b-slice", "proofkd:qwen3-30b-a3b-slice"),
        ("stage2_sft", "proofkd:qwen3-1.7b-slice", None),
        ("opd", "proofkd:qwen3-1.7b-base-slice", "proofkd:qwen3-4b-base-slice"),
    ],
)
def test_a_rehearsal_changes_the_models_data_steps_and_precision_only(unresolved, name, student, teacher):
    card, run, changes = rehearsed(name)
    assert run["base_model"] == f"/cache/{student}"
    assert run.get("proofkd_teacher") == (f"/cache/{teacher}" if teacher else None)
    assert run["max_steps"] == 2 and run["logging_steps"] == 1 and run["bf16"] is False
    assert run["output_dir"] == str(OUT / "run")
    for index, dataset in enumerate(run["datasets"]):
        assert dataset["path"].startswith("/cache/proofkd:"), dataset
        assert {k: v for k, v in dataset.items() if k != "path"} == {
            k: v for k, v in card["datasets"][index].items() if k != "path"
        }
    # Every other value, nested ones included, is the card's.
    assert without(run, set(changes)) == without(card, set(changes))


def test_a_grpo_rehearsal_samples_in_the_trainer_with_short_rollouts(unresolved):
    card, run, changes = rehearsed("opd")
    assert run["trl"]["use_vllm"] is False
    assert run["trl"]["max_completion_length"] == 32 < card["trl"]["max_completion_length"]
    assert run["trl"]["num_generations"] == card["trl"]["num_generations"]  # the card's, not an override
    assert changes["trl.use_vllm"].card is True


def test_the_overrides_table_shows_the_cards_value_beside_the_rehearsals():
    cfg = read_recipe("stage1_kd")[1]
    table = rehearse.format_overrides(rehearse.overrides(cfg, 3, OUT))
    assert "| base_model | Qwen/Qwen3-1.7B | proofkd:qwen3-1.7b-slice |" in table
    assert "| proofkd_teacher_dtype | bfloat16 | float32 |" in table
    assert "| max_steps | None | 3 |" in table


def test_a_served_teacher_is_left_to_its_server():
    cfg = {**read_recipe("stage1_kd")[1], "proofkd_teacher_server": "http://host:8000/v1"}
    keys = {c.key for c in rehearse.overrides(cfg, 2, OUT)}
    assert "proofkd_teacher" not in keys and "proofkd_teacher_dtype" not in keys


def test_the_step_table_takes_the_nested_parts_apart():
    record = {
        "proofkd/seconds/micro_step": 10.0,
        "proofkd/seconds/teacher_forward": 2.0,
        "proofkd/seconds/student_forward": 5.0,
        "proofkd/seconds/loss_head": 3.0,
        "proofkd/seconds/optimizer_step": 1.5,
        "proofkd/peak_gib/loss_head": 1.25,
    }
    table = rehearse.format_step_parts(record)
    assert "| teacher forward | 2.00 |" in table
    assert "| student forward (body) | 2.00 |" in table  # 5 - the loss head's 3
    assert "| loss head (forward and backward) | 3.00 | 1.25 (loss_head) |" in table
    assert "| student backward (body) | 3.00 |" in table  # 10 - 2 - 5
    assert "| optimizer step | 1.50 |" in table
    assert rehearse.format_step_parts({"loss": 1.0}) == ""


@pytest.mark.parametrize(
    "change, message",
    [
        ({"base_model": "meta-llama/Llama-3.2-1B"}, "base_model: meta-llama/Llama-3.2-1B has no real-width slice"),
        ({"proofkd_teacher": "org/teacher"}, "proofkd_teacher: org/teacher has no real-width slice"),
        ({"base_model": "outputs/stage1"}, "base_model: outputs/stage1 has no real-width slice"),
        ({"datasets": [{"path": "d.jsonl", "type": "alpaca"}]}, "datasets[0]: the format 'alpaca' has no generated"),
    ],
)
def test_what_cannot_be_rehearsed_is_named(change, message):
    cfg = {**read_recipe("stage1_kd")[1], **change}
    with pytest.raises(rehearse.RehearseError, match=message.replace("[", r"\[").replace("]", r"\]")):
        rehearse.overrides(cfg, 2, OUT)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["rehearse", "nope.yml"], "recipe nope.yml does not exist"),
        (["rehearse", "stage1_kd", "--steps", "0"], "--steps 0: a rehearsal needs at least one optimizer step"),
        (["rehearse", "stage1_kd", "--output-dir", "notes.txt/run"], "notes.txt is a file, not a folder"),
    ],
)
def test_the_command_refuses_bad_input_before_any_work(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("proofkd rehearse: ")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "outputs").exists()
