"""The side-by-side report without running a model: model specs, task checks, the table, the chart, the command line."""

from __future__ import annotations

import argparse
import json

import pytest

from proofkd.cli import evaluate
from proofkd.evals import TASKS_DIR, data, models, report
from proofkd.evals.models import EvalSetupError, ModelSpec, ModelSpecError
from proofkd.evals.report import UnknownTaskError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def hf_folder(path, *, tokenizer: bool = True):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    if tokenizer:
        (path / "tokenizer.json").write_text("{}")
    return path


def test_model_specs_parse_with_and_without_a_tokenizer():
    assert models.parse_model_spec("teacher=proofkd:smollm2-135m-instruct?layers=4") == ModelSpec(
        "teacher", "proofkd:smollm2-135m-instruct?layers=4"
    )
    assert models.parse_model_spec("q4=out/m-Q4_K_M.gguf::tokenizer=out/hf") == ModelSpec(
        "q4", "out/m-Q4_K_M.gguf", "out/hf"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [("no-equals-sign", "NAME=SPEC"), ("=path", "NAME"), ("a b=path", "NAME"), ("x=m.gguf::tok=dir", "unknown option")],
)
def test_malformed_model_specs_are_refused(text, message):
    with pytest.raises(ModelSpecError, match=message):
        models.parse_model_spec(text)


def test_tokenizer_options_attach_to_the_named_model():
    specs = [ModelSpec("a", "a.gguf"), ModelSpec("b", "b")]
    assert models.with_tokenizers(specs, ["a=tok"]) == [ModelSpec("a", "a.gguf", "tok"), ModelSpec("b", "b")]
    with pytest.raises(ModelSpecError, match="no --model is named 'c'"):
        models.with_tokenizers(specs, ["c=tok"])


def test_an_hf_folder_becomes_pretrained_with_the_dtype(tmp_path):
    folder = hf_folder(tmp_path / "student")
    assert models.model_args(ModelSpec("s", str(folder)), "float32") == {"pretrained": str(folder), "dtype": "float32"}


def test_missing_and_non_checkpoint_paths_are_named(tmp_path):
    with pytest.raises(ModelSpecError, match=r"'s': .*nowhere does not exist"):
        models.model_args(ModelSpec("s", str(tmp_path / "nowhere")), "float32")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSpecError, match="no config.json"):
        models.model_args(ModelSpec("s", str(tmp_path / "empty")), "float32")
    with pytest.raises(ModelSpecError, match="unknown reference"):
        models.model_args(ModelSpec("s", "proofkd:no-such-model"), "float32")


def test_a_gguf_runs_in_llama_cpp_with_the_tokenizer_beside_it_or_named(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "read_gguf", lambda path: path)  # the header check has its own tests
    folder = hf_folder(tmp_path / "export")
    (folder / "model-Q4_K_M.gguf").write_bytes(b"GGUF")
    args = models.model_args(ModelSpec("q4", str(folder / "model-Q4_K_M.gguf")), "float32")
    assert args == {"pretrained": str(folder / "model-Q4_K_M.gguf"), "tokenizer": str(folder)}
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "m.gguf").write_bytes(b"GGUF")
    # llama.cpp reads the tokenizer from the file; an HF one only gives the chat template
    assert models.model_args(ModelSpec("q", str(bare / "m.gguf")), "float32") == {"pretrained": str(bare / "m.gguf")}
    other = hf_folder(tmp_path / "hf")
    args = models.model_args(ModelSpec("q", str(bare / "m.gguf"), str(other)), "float32")
    assert args["tokenizer"] == str(other)
    with pytest.raises(ModelSpecError, match="has no tokenizer files"):
        models.model_args(ModelSpec("q", str(bare / "m.gguf"), str(bare)), "float32")


@pytest.fixture(scope="module")
def manager():
    return report.task_manager()


def test_unknown_task_names_list_close_names(manager):
    report.check_task_names(["proofkd_stem", "proofkd_legal_mc", "gsm8k"], manager)
    with pytest.raises(UnknownTaskError, match=r"'proofkd_stm' \(close names: proofkd_stem"):
        report.check_task_names(["proofkd_stm"], manager)
    with pytest.raises(UnknownTaskError, match="no close names"):
        report.check_task_names(["zzzzzzzzzzzzzzzz"], manager)


def test_the_task_folder_is_found_through_the_package(tmp_path, monkeypatch):
    import lm_eval.tasks

    built = []
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda **kwargs: built.append(kwargs))
    monkeypatch.chdir(tmp_path)
    report.task_manager(include_path=None, data_dir="d")
    report.task_manager(include_path=TASKS_DIR / "legal")
    assert built == [
        {"include_path": str(TASKS_DIR), "metadata": {"data_dir": str(tmp_path.resolve() / "d")}},
        {"include_path": str(TASKS_DIR / "legal"), "metadata": None},
    ]
    with pytest.raises(EvalSetupError, match="does not exist"):
        report.task_manager(include_path=tmp_path / "missing")


def fake_results(correct: float, acc: float | None) -> dict:
    results = {
        "proofkd_stem": {"alias": "proofkd_stem", "correct,none": correct, "correct_stderr,none": 0.05},
        "proofkd_stem_synthetic": {
            "alias": " - proofkd_stem_synthetic",
            "correct,none": correct,
            "correct_stderr,none": 0.05,
            "derivation_words,none": 57.25,
            "derivation_words_stderr,none": "N/A",
        },
    }
    if acc is not None:
        results["proofkd_legal_mc"] = {"alias": "proofkd_legal_mc", "acc,none": acc, "acc_stderr,none": 0.1}
    return {
        "results": results,
        "group_subtasks": {"proofkd_stem": ["proofkd_stem_synthetic"], "proofkd_legal_mc": []},
        "n-samples": {
            "proofkd_stem_synthetic": {"original": 40, "effective": 40},
            "proofkd_legal_mc": {"effective": 24},
        },
    }


MODELS = [ModelSpec("teacher", "proofkd:smollm2-135m-instruct"), ModelSpec("student", "outputs/student")]


def test_rows_cover_every_metric_of_every_model_in_order():
    rows = report.metric_rows({"teacher": fake_results(0.5, 0.25), "student": fake_results(0.125, None)})
    assert [(r.task, r.metric, r.is_group, r.samples) for r in rows] == [
        ("proofkd_stem", "correct", True, None),
        ("proofkd_stem_synthetic", "correct", False, 40),
        ("proofkd_stem_synthetic", "derivation_words", False, 40),
        ("proofkd_legal_mc", "acc", False, 24),
    ]
    assert rows[1].values == {"teacher": 0.5, "student": 0.125}
    assert rows[3].values == {"teacher": 0.25}
    assert rows[2].stderrs == {"teacher": None, "student": None}


def test_the_markdown_table_has_a_column_per_model():
    rows = report.metric_rows({"teacher": fake_results(0.5, 0.25), "student": fake_results(0.125, None)})
    text = report.render_markdown(rows, MODELS, {"limit": "none"})
    assert "| task | metric | n | teacher | student |" in text
    assert "| proofkd_stem_synthetic | correct | 40 | 0.500 ± 0.050 | 0.125 ± 0.050 |" in text
    assert "| proofkd_stem_synthetic | derivation_words | 40 | 57.2 | 57.2 |" in text
    assert "| proofkd_legal_mc | acc | 24 | 0.250 ± 0.100 | n/a |" in text
    assert "| **proofkd_stem** (group) | correct |" in text
    assert "`proofkd:smollm2-135m-instruct`" in text


def test_the_chart_shows_task_fractions_only_and_is_a_png(tmp_path):
    rows = report.metric_rows({"teacher": fake_results(0.5, 0.25), "student": fake_results(0.125, None)})
    assert [(r.task, r.metric) for r in report.plotted_rows(rows)] == [
        ("proofkd_stem_synthetic", "correct"),
        ("proofkd_legal_mc", "acc"),
    ]
    paths = report.write_report(
        {"teacher": fake_results(0.5, 0.25), "student": fake_results(0.125, None)}, MODELS, tmp_path, {}
    )
    assert [p.name for p in paths] == ["report.md", "report.png", "report.json"]
    assert (tmp_path / "report.png").read_bytes().startswith(PNG_SIGNATURE)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["models"]["student"]["spec"] == "outputs/student"
    assert saved["rows"][1]["values"] == {"teacher": 0.5, "student": 0.125}


def test_results_of_two_passes_merge():
    plain = fake_results(0.5, None)
    templated = {
        "results": {"proofkd_math_competition": {"accuracy,none": 0.1}},
        "group_subtasks": {"proofkd_math_competition": []},
        "n-samples": {"proofkd_math_competition": {"effective": 40}},
    }
    merged = report.merge_results([plain, templated])
    assert list(merged["results"]) == ["proofkd_stem", "proofkd_stem_synthetic", "proofkd_math_competition"]
    assert merged["n-samples"]["proofkd_math_competition"]["effective"] == 40


def test_bad_runs_are_refused_before_any_model_loads(tmp_path):
    folder = hf_folder(tmp_path / "m")
    with pytest.raises(ModelSpecError, match="must differ"):
        report.run_side_by_side([ModelSpec("a", str(folder)), ModelSpec("a", str(folder))], ["proofkd_stem"], tmp_path)
    with pytest.raises(EvalSetupError, match="not among the tasks"):
        report.run_side_by_side(
            [ModelSpec("a", str(folder))], ["proofkd_stem"], tmp_path, apply_chat_template=["proofkd_math"]
        )


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="proofkd")
    evaluate.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_the_eval_command_parses_its_options():
    args = parse("eval", "--model", "a=x", "--model", "b=y", "--limit", "3", "--apply-chat-template", "proofkd_math")
    assert args.model == ["a=x", "b=y"] and args.limit == 3 and args.func is evaluate.run
    assert args.tasks == "proofkd_stem,proofkd_legal,proofkd_math" and args.batch_size == 1
    assert parse("eval", "--model", "a=x", "--limit", "0.5", "--batch-size", "auto").limit == 0.5
    assert parse("eval", "--model", "a=x", "--apply-chat-template").apply_chat_template == "all"
    with pytest.raises(SystemExit):
        parse("eval", "--model", "a=x", "--batch-size", "0")


def test_the_eval_command_reports_setup_errors_in_one_line(tmp_path, capsys, monkeypatch, manager):
    monkeypatch.setattr(report, "task_manager", lambda *args: manager)
    assert evaluate.run(parse("eval", "--model", f"a={tmp_path / 'missing'}", "--out", str(tmp_path / "out"))) == 2
    assert "proofkd eval: model 'a'" in capsys.readouterr().err
    folder = hf_folder(tmp_path / "m")
    assert (
        evaluate.run(parse("eval", "--model", f"a={folder}", "--tasks", "proofkd_legl", "--out", str(tmp_path / "o")))
        == 2
    )
    err = capsys.readouterr().err
    assert "unknown task 'proofkd_legl'" in err and "proofkd_legal" in err
    assert not (tmp_path / "o").exists()


def test_tasks_whose_data_is_missing_are_refused_before_any_model_loads(tmp_path, monkeypatch):
    import lm_eval.api.registry

    folder = hf_folder(tmp_path / "m")
    monkeypatch.setattr(lm_eval.api.registry, "get_model", lambda name: pytest.fail("a model was loaded"))
    with pytest.raises(data.MissingEvalSplitError, match="proofkd data build stage2_sft"):
        report.run_side_by_side(
            [ModelSpec("a", str(folder))],
            ["proofkd_legal_mc", "proofkd_legal_qa_heldout"],
            tmp_path / "out",
            data_dir=tmp_path / "no-data",
        )
    broken = tmp_path / "tasks"
    broken.mkdir()
    (broken / "utils.py").write_text("def load(**metadata):\n    raise ConnectionError('no route to the Hub')\n")
    (broken / "remote.yaml").write_text(
        "task: remote_task\ncustom_dataset: !function utils.load\noutput_type: generate_until\n"
        "test_split: test\ndoc_to_text: q\ndoc_to_target: a\n"
    )
    with pytest.raises(EvalSetupError, match=r"task 'remote_task' could not load: ConnectionError: no route"):
        report.run_side_by_side([ModelSpec("a", str(folder))], ["remote_task"], tmp_path / "out", include_path=broken)
    assert not (tmp_path / "out").exists()


def test_proofkd_registers_the_eval_command():
    from proofkd.cli import build_parser

    args = build_parser().parse_args(["eval", "--model", "a=x", "--tasks", "proofkd_legal_mc"])
    assert args.func is evaluate.run and args.tasks == "proofkd_legal_mc"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--model", "a=x", "--limit", "many"])
