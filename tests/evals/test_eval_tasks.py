"""The lm-eval tasks: indexed by lm-eval, grouped as documented, loadable from anywhere, held-out data handled."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from proofkd.core.data import stem
from proofkd.core.templates import render_dapo_prompt, render_stage1_prompt
from proofkd.evals import TASKS_DIR, data, scoring

OFFLINE_TASKS = {
    "proofkd_stem_synthetic": 40,
    "proofkd_legal_qa": 24,
    "proofkd_legal_mc": 24,
    "proofkd_math_competition": 40,
}
HELDOUT_TASKS = {"proofkd_stem_heldout": "stage1_kd", "proofkd_legal_qa_heldout": "stage2_sft"}
GROUPS = {
    "proofkd_stem": ["proofkd_stem_synthetic"],
    "proofkd_legal": ["proofkd_legal_qa", "proofkd_legal_mc"],
    "proofkd_math": ["proofkd_math_competition"],
    "proofkd_suite": [
        "proofkd_stem",
        "proofkd_legal",
        "proofkd_math",
        "gsm8k",
        "minerva_math500",
        "mmlu_professional_law",
    ],
}


class _IgnoreTags(yaml.SafeLoader):
    """Reads task YAMLs without executing lm-eval's `!function` tags."""


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)


def task_yamls() -> dict[Path, dict]:
    return {path: yaml.load(path.read_text(), Loader=_IgnoreTags) for path in sorted(TASKS_DIR.rglob("*.yaml"))}


@pytest.fixture(scope="module")
def manager():
    """lm-eval's index of its own tasks and ours, as `--include_path evals/tasks` builds it."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR))


def our_manager(**metadata):
    """An index of our folder only (quick), with task metadata such as `data_dir`."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata or None)


def leaf_tasks(task_dict: dict) -> dict:
    leaves = {}
    for key, value in task_dict.items():
        if isinstance(value, dict):
            leaves.update(leaf_tasks(value))
        else:
            leaves[key] = value
    return leaves


def load(names: list[str], manager) -> dict:
    from lm_eval.tasks import get_task_dict

    return leaf_tasks(get_task_dict(names, manager))


def test_every_task_and_group_is_indexed_with_its_kind(manager):
    ours = {name for name in manager.all_tasks if name.startswith("proofkd")}
    assert ours == set(OFFLINE_TASKS) | set(HELDOUT_TASKS) | set(GROUPS)
    for name in ours:
        kind = "group" if name in GROUPS else "task"
        assert manager.task_index[name]["type"] == kind, name
        assert Path(manager.task_index[name]["yaml_path"]).is_relative_to(TASKS_DIR)


def test_names_are_unique_and_prefixed():
    """lm-eval keeps the first of two tasks with one name and lets ours replace a built-in one silently."""
    names = [config.get("task") if "group" not in config else config["group"] for config in task_yamls().values()]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"proofkd_[a-z0-9_]+", name) for name in names)


def test_groups_list_the_documented_tasks_and_only_offline_ones():
    groups = {config["group"]: config["task"] for config in task_yamls().values() if "group" in config}
    assert groups == GROUPS
    for group, members in groups.items():
        assert not set(members) & set(HELDOUT_TASKS), group


def test_the_suite_names_established_tasks_that_lm_eval_knows(manager):
    for name in ("gsm8k", "minerva_math500", "mmlu_professional_law", "mmlu_pro_law"):
        assert name in manager.all_tasks
        assert not Path(manager.task_index[name]["yaml_path"]).is_relative_to(TASKS_DIR)


def test_groups_load_their_tasks_and_aggregate_by_size():
    from lm_eval.tasks import get_task_dict

    loaded = get_task_dict(["proofkd_stem", "proofkd_legal", "proofkd_math"], our_manager())
    by_group = {group.group_name: sorted(tasks) for group, tasks in loaded.items()}
    assert by_group == {name: sorted(GROUPS[name]) for name in ("proofkd_stem", "proofkd_legal", "proofkd_math")}
    for group in loaded:
        aggregates = group.config["aggregate_metric_list"]
        assert aggregates and all(entry["weight_by_size"] for entry in aggregates), group.group_name


def test_offline_tasks_load_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tasks = load(list(OFFLINE_TASKS), our_manager())
    assert {name: len(task.test_docs()) for name, task in tasks.items()} == OFFLINE_TASKS

    stem_task = tasks["proofkd_stem_synthetic"]
    doc = stem_task.test_docs()[0]
    assert stem_task.doc_to_text(doc) == render_stage1_prompt(doc["question"])
    assert stem_task.doc_to_text(doc).endswith("Proof:\n")
    kwargs = stem_task.config.generation_kwargs
    assert kwargs["do_sample"] is False and kwargs["temperature"] == 0.0 and kwargs["max_gen_toks"] >= 512
    assert {"\nProblem:", "Solve the following problem", "<|im_end|>"} <= set(kwargs["until"])

    legal_task = tasks["proofkd_legal_qa"]
    prompt = legal_task.doc_to_text(legal_task.test_docs()[0])
    assert prompt.startswith("### Instruction:\n") and prompt.endswith("\n### Response:\n")

    math_task = tasks["proofkd_math_competition"]
    doc = math_task.test_docs()[0]
    assert math_task.doc_to_text(doc) == render_dapo_prompt(doc["problem"])
    assert re.fullmatch(r"\d+", math_task.doc_to_target(doc))


def test_the_synthetic_stem_set_is_held_out_from_training_problems():
    docs = data.stem_synthetic_docs()
    assert docs == data.stem_synthetic_docs()
    assert all(stem.split_of(doc["question"]) == "heldout" for doc in docs)
    assert len({doc["domain"] for doc in docs}) >= 5


def test_the_multiple_choice_set_is_well_formed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    task = load(["proofkd_legal_mc"], our_manager())["proofkd_legal_mc"]
    docs = list(task.test_docs())
    for doc in docs:
        choices = task.doc_to_choice(doc)
        assert len(choices) == len(set(choices)) == 4
        assert task.doc_to_target(doc) in range(4)
    # The right option's position varies, so always answering one position cannot score well.
    positions = [task.doc_to_target(doc) for doc in docs]
    assert max(positions.count(i) for i in range(4)) <= len(docs) / 2


def test_the_process_results_hooks_score_right_and_wrong_answers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tasks = load(["proofkd_stem_synthetic", "proofkd_legal_qa", "proofkd_math_competition"], our_manager())

    stem_task = tasks["proofkd_stem_synthetic"]
    doc = stem_task.test_docs()[0]
    right = f"We compute.\nFinal Answer:\n{doc['reference']}"
    assert stem_task.process_results(doc, [right]) == {"correct": 1.0, "format": 1.0, "derivation_words": 2.0}
    assert stem_task.process_results(doc, ["We compute."])["correct"] == 0.0

    legal_task = tasks["proofkd_legal_qa"]
    doc = legal_task.test_docs()[0]
    assert legal_task.process_results(doc, [doc["reference"]])["term_coverage"] == 1.0
    assert legal_task.process_results(doc, [""]) == {"rougeL": 0.0, "answered": 0.0, "term_coverage": 0.0}

    math_task = tasks["proofkd_math_competition"]
    doc = math_task.test_docs()[0]
    assert math_task.process_results(doc, [f"Steps.\nAnswer: {doc['answer']}"]) == {"accuracy": 1.0, "answer_line": 1.0}


def test_restating_the_legal_question_earns_no_term_coverage():
    docs = data.legal_qa_docs(TASKS_DIR / "legal" / "legal_qa.jsonl")
    raw = {row["question"]: row["terms"] for row in data.read_jsonl(TASKS_DIR / "legal" / "legal_qa.jsonl")}
    assert any(len(doc["terms"]) < len(raw[doc["question"]]) for doc in docs)
    for doc in docs:
        assert len(doc["terms"]) >= 3, doc["question"]
        assert scoring.legal_scores(doc["question"], doc["reference"], doc["terms"])["term_coverage"] == 0.0
        assert scoring.legal_scores(doc["reference"], doc["reference"], doc["terms"])["term_coverage"] == 1.0


def test_a_legal_item_whose_terms_are_all_in_its_question_is_refused(tmp_path):
    path = write_jsonl(
        tmp_path / "qa.jsonl",
        [{"id": "parrot", "question": "What is negligence?", "reference": "Negligence is...", "terms": ["negligence"]}],
    )
    with pytest.raises(ValueError, match="'parrot' is in its question"):
        data.legal_qa_docs(path)


@pytest.mark.parametrize(("task", "recipe"), sorted(HELDOUT_TASKS.items()))
def test_heldout_tasks_say_how_to_build_missing_data(task, recipe, tmp_path):
    from lm_eval.tasks import get_task_dict

    with pytest.raises(data.MissingEvalSplitError, match=f"proofkd data build {recipe}"):
        get_task_dict([task], our_manager(data_dir=str(tmp_path / "nothing")))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_heldout_tasks_read_the_built_eval_splits(tmp_path, monkeypatch):
    rows = stem.generate("heldout", 3, seed=5)
    write_jsonl(
        tmp_path / "built" / "stage1_kd" / "eval.jsonl",
        [{"question": r["question"], "CoT": r["CoT"], "response": r["response"], "source": "physics"} for r in rows],
    )
    legal = [
        {
            "instruction": "Define laches.",
            "input": "",
            "output": "Laches bars a claim after unreasonable delay.",
            "source": "x",
        },
        {
            "instruction": "Explain this clause.",
            "input": "Time is of the essence.",
            "output": "Deadlines are strict.",
            "source": "x",
        },
    ]
    write_jsonl(tmp_path / "built" / "stage2_sft" / "eval.jsonl", legal)
    monkeypatch.chdir(tmp_path)
    tasks = load(list(HELDOUT_TASKS), our_manager(data_dir=str(tmp_path / "built")))

    stem_task = tasks["proofkd_stem_heldout"]
    docs = list(stem_task.test_docs())
    assert [doc["reference"] for doc in docs] == [r["response"] for r in rows]
    assert stem_task.doc_to_text(docs[0]) == render_stage1_prompt(rows[0]["question"])
    answer = f"{rows[0]['CoT']}\nFinal Answer:\n{rows[0]['response']}"
    assert stem_task.process_results(docs[0], [answer])["correct"] == 1.0

    legal_task = tasks["proofkd_legal_qa_heldout"]
    docs = list(legal_task.test_docs())
    assert (
        legal_task.doc_to_text(docs[1])
        == "### Instruction:\nExplain this clause.\nTime is of the essence.\n### Response:\n"
    )
    assert set(legal_task.process_results(docs[0], [legal[0]["output"]])) == {"rougeL", "answered"}


def test_the_data_folder_comes_from_metadata_then_environment_then_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROOFKD_DATA_DIR", raising=False)
    assert data.data_dir({}) == tmp_path.resolve() / "data"
    monkeypatch.setenv("PROOFKD_DATA_DIR", str(tmp_path / "env"))
    assert data.data_dir({}) == tmp_path.resolve() / "env"
    assert data.data_dir({"data_dir": str(tmp_path / "meta")}) == tmp_path.resolve() / "meta"


def test_an_empty_eval_split_is_an_error(tmp_path):
    write_jsonl(tmp_path / "stage1_kd" / "eval.jsonl", [])
    with pytest.raises(data.MissingEvalSplitError, match="empty"):
        data.eval_split("stage1_kd", {"data_dir": str(tmp_path)})


def test_every_task_file_is_shipped_with_the_package():
    """pyproject ships tasks/**/*.yaml, *.py and *.jsonl; the README is for readers of the source."""
    files = [p for p in TASKS_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    unshipped = [p.name for p in files if p.suffix not in (".yaml", ".py", ".jsonl") and p.name != "README.md"]
    assert unshipped == []


def test_the_readme_documents_every_task_group_and_companion_task():
    readme = (TASKS_DIR / "README.md").read_text(encoding="utf-8")
    for name in [
        *OFFLINE_TASKS,
        *HELDOUT_TASKS,
        *GROUPS,
        "mmlu_professional_law",
        "mmlu_pro_law",
        "gsm8k",
        "minerva_math500",
    ]:
        assert f"`{name}`" in readme, name
    for command in (
        "proofkd data build stage1_kd",
        "proofkd data build stage2_sft",
        "lm_eval --model hf",
        "proofkd eval",
    ):
        assert command in readme, command


def test_lm_eval_command_line_finds_the_tasks_from_another_directory(tmp_path):
    """What `lm_eval --include_path evals/tasks` sees: every name valid, an unknown one refused."""
    import shutil
    import subprocess

    command = shutil.which("lm-eval") or shutil.which("lm_eval")
    assert command, "lm-eval's command line is not installed"
    names = ",".join(["proofkd_stem", "proofkd_legal", "proofkd_math", "proofkd_suite", *HELDOUT_TASKS])

    def validate(tasks: str) -> subprocess.CompletedProcess:
        argv = [command, "validate", "--tasks", tasks, "--include_path", str(TASKS_DIR)]
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    found = validate(names)
    assert found.returncode == 0, found.stdout + found.stderr
    assert "All tasks found and valid" in found.stdout + found.stderr
    missing = validate("proofkd_stm")
    assert missing.returncode != 0 and "proofkd_stm" in missing.stdout + missing.stderr
