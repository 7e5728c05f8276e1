"""`quickstart`, `plan`, `recipes copy` and `eval` given what a new user gets wrong.

Each case: exit 2, one line `proofkd <command>: ...` naming the input and the fix, no traceback, and nothing
written. Every one is refused before a model or data is touched, so these run in a moment.
"""

from __future__ import annotations

import pytest
import torch

from proofkd.cli import main

SMALL = "s=proofkd:smollm2-135m-instruct?layers=1"


def refused(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    command = argv[0] if argv[0] != "recipes" else "recipes copy"
    lines = [line for line in err.splitlines() if line.startswith(f"proofkd {command}:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "broken.yml").write_text("base_model: x\ndatasets: [1,\n")
    (tmp_path / "empty.yml").write_text("")
    (tmp_path / "latin.yml").write_bytes(b"base_model: caf\xe9\n")
    (tmp_path / "a_list.yml").write_text("- base_model: x\n")
    (tmp_path / "no_teacher.yml").write_text("base_model: x\ndatasets: [{path: d}]\ntest_datasets: [{path: d}]\n")
    (tmp_path / "folder").mkdir()
    return tmp_path


RECIPES = [
    ("nope.yml", "recipe nope.yml does not exist; pass a recipe file, or a shipped recipe's name"),
    ("some/where/x.yml", "recipe some/where/x.yml does not exist"),
    ("nope", "unknown recipe 'nope'; the recipes that ship with proofkd are: opd, stage1_kd"),
    ("folder", "recipe folder is a folder: pass the recipe's .yml file"),
    ("broken.yml", "recipe broken.yml is not valid YAML at line 3, column 1: while parsing a flow node"),
    ("empty.yml", "recipe empty.yml is empty: it needs at least base_model: and datasets:"),
    ("latin.yml", "recipe latin.yml is not UTF-8: line 1 has the byte 0xe9; re-encode it as UTF-8"),
    ("a_list.yml", "recipe a_list.yml is a YAML list, not a mapping of keys"),
]


@pytest.mark.parametrize("recipe, message", RECIPES, ids=[r[0] for r in RECIPES])
def test_a_bad_recipe_is_named_by_plan_and_quickstart(files, capsys, recipe, message):
    assert message in refused(capsys, ["plan", recipe, "--gpu", "h100-80gb"])
    assert message in refused(capsys, ["quickstart", "--recipe", recipe, "--output-dir", "run"])
    assert not (files / "run").exists()


def test_a_recipe_without_the_keys_the_quickstart_reads(files, capsys):
    line = refused(capsys, ["quickstart", "--recipe", "no_teacher.yml", "--output-dir", "run"])
    assert "--recipe no_teacher.yml has no proofkd_teacher, which the quickstart reads" in line
    assert "proofkd recipes copy quickstart/stage1_kd" in line


@pytest.mark.parametrize("opd", [[], ["--opd"]])
def test_a_quickstart_output_below_a_file_is_refused_first(files, capsys, opd):
    line = refused(capsys, ["quickstart", *opd, "--output-dir", "notes.txt/run"])
    assert "--output-dir notes.txt/run: notes.txt is a file, not a folder" in line
    assert (files / "notes.txt").read_text() == "keep me"


def test_plan_needs_a_gpu(files, capsys):
    assert "--gpus 0: the plan needs at least one GPU" in refused(
        capsys, ["plan", "stage1_kd", "--gpu", "h100-80gb", "--gpus", "0"]
    )


def test_a_copy_below_a_file_is_refused(files, capsys):
    line = refused(capsys, ["recipes", "copy", "stage1_kd", "notes.txt/stage1.yml"])
    assert "cannot copy to notes.txt/stage1.yml: notes.txt is a file, not a folder" in line
    assert (files / "notes.txt").read_text() == "keep me"


def test_an_eval_out_below_a_file_is_refused_before_any_model_loads(files, capsys, monkeypatch):
    import proofkd.evals.models as models

    monkeypatch.setattr(models, "parse_model_spec", lambda text: pytest.fail("a model spec was read"))
    line = refused(capsys, ["eval", "--model", SMALL, "--out", "notes.txt/eval"])
    assert "--out notes.txt/eval: notes.txt is a file, not a folder" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_an_eval_on_a_cuda_device_this_machine_lacks(files, capsys):
    line = refused(capsys, ["eval", "--model", SMALL, "--device", "cuda:1", "--out", "eval"])
    assert "--device cuda:1 needs CUDA, which this machine does not have; pass --device cpu" in line
    assert not (files / "eval").exists()


@pytest.mark.parametrize(
    "recipe, message",
    [
        ("missing.yml", "recipe missing.yml does not exist"),
        ("broken.yml", "broken.yml"),
        ("no_teacher.yml", "sets no proofkd_teacher_cache: give the cache's folder with --out"),
    ],
)
def test_teacher_cache_refuses_a_recipe_it_cannot_use(files, capsys, recipe, message):
    assert main(["teacher", "cache", recipe]) == 2
    err = capsys.readouterr().err
    assert err.startswith("proofkd teacher cache: ") and message in err and "Traceback" not in err
    assert sorted(p.name for p in files.iterdir()) == sorted(
        ["notes.txt", "broken.yml", "empty.yml", "latin.yml", "a_list.yml", "no_teacher.yml", "folder"]
    )


def test_an_unwritable_output_is_refused_by_quickstart_and_eval_before_any_work(files, capsys, monkeypatch):
    """Root ignores permissions, so the refusal is checked through `os.access`."""
    import os

    locked = files / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(locked) else real_access(path, mode))
    line = refused(capsys, ["quickstart", "--output-dir", str(locked / "run")])
    assert "is not writable by this user. Pass an --output-dir you can write to" in line
    line = refused(capsys, ["eval", "--model", SMALL, "--out", str(locked / "eval")])
    assert "is not writable by this user. Pass an --out you can write to" in line
    assert list(locked.iterdir()) == []
