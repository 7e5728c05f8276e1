"""The `proofkd` command line: the quickstart chain on tiny models, and `resolve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from proofkd.cli import build_parser, main
from proofkd.cli.quickstart import format_table
from tests.helpers import tiny_recipe


def proofkd(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "proofkd.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_quickstart_measures_before_trains_and_measures_after(tiny, tmp_path):
    cfg = tiny_recipe(
        tmp_path,
        student=tiny["student"],
        teacher=tiny["teacher"],
        train_file=tiny["train"],
        eval_file=tiny["heldout"],
        max_steps=4,
        eval_steps=4,
    )
    recipe = tmp_path / "tiny.yml"
    recipe.write_text(yaml.safe_dump(cfg))
    done = proofkd("quickstart", "--recipe", str(recipe), "--output-dir", str(tmp_path / "qs"), cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    summary = json.loads((tmp_path / "qs" / "summary.json").read_text())
    assert summary["after"]["kl"] < summary["before"]["kl"]
    assert summary["after"]["ce"] < summary["before"]["ce"]
    assert summary["teacher"]["kl"] == 0.0
    assert summary["heldout_rows"] == 8
    assert "| KL(teacher \\|\\| student), T=1, nats/token |" in done.stdout  # pipes escaped for Markdown
    assert (tmp_path / "qs" / "student" / "model.safetensors").is_file()


@pytest.mark.parametrize("opd, name", [(False, "quickstart/stage1_kd"), (True, "quickstart/opd")])
def test_quickstart_reads_its_recipe_from_the_package_in_any_folder(tmp_path, monkeypatch, opd, name):
    from proofkd.cli import quickstart
    from proofkd.core.recipes import recipes_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").mkdir()  # a folder of the same name does not hide the shipped recipe
    default = quickstart.OPD_RECIPE if opd else quickstart.DEFAULT_RECIPE
    path, cfg = quickstart._check(None, default, tmp_path / "out", ("base_model",))
    assert path.is_absolute() and path.is_file() and cfg["base_model"]
    assert path == recipes_dir() / f"{name}.yml"
    (tmp_path / "mine.yml").write_text("base_model: mine\n")
    assert quickstart._check("mine.yml", default, tmp_path / "out", ("base_model",))[0] == Path("mine.yml")


def test_shipped_quickstart_recipes_need_no_file_of_the_repository():
    """Read from an installed package, a quickstart recipe may only name `proofkd:` references and outputs/."""
    from proofkd.core.recipes import list_recipes

    for recipe in [r for r in list_recipes() if r.name.startswith("quickstart/")]:
        cfg = yaml.safe_load(recipe.path.read_text(encoding="utf-8"))
        for entry in [*cfg.get("datasets", []), *cfg.get("test_datasets", [])]:
            assert entry["path"].startswith("proofkd:"), (recipe.name, entry["path"])
        assert cfg.get("proofkd_teacher", "proofkd:").startswith("proofkd:"), recipe.name
        assert cfg["base_model"].startswith(("proofkd:", "./outputs/")), recipe.name
        for key in ("output_dir", "dataset_prepared_path"):
            if key in cfg:
                assert cfg[key].startswith("./outputs/"), (recipe.name, key, cfg[key])


def test_recipes_list_works_from_another_folder(tmp_path):
    done = proofkd("recipes", "list", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = [line.split(None, 2) for line in done.stdout.splitlines()]
    names = [row[0] for row in rows]
    assert names == [
        "opd",
        "stage1_kd",
        "stage2_sft",
        "quickstart/opd",
        "quickstart/stage1_kd",
        "quickstart/stage2_sft",
    ]
    for name, path, description in rows:
        assert Path(path).is_file() and Path(path).as_posix().endswith(f"{name}.yml")
        assert description
    assert rows[4][2].startswith("CPU twin of yaml/stage1_kd.yml")


def test_recipes_copy_refuses_to_overwrite_without_force(tmp_path, capsys):
    from proofkd.core.recipes import recipe_path

    assert main(["recipes", "copy", "quickstart/stage1_kd", str(tmp_path)]) == 0
    copied = tmp_path / "stage1_kd.yml"
    assert copied.read_bytes() == recipe_path("quickstart/stage1_kd").read_bytes()
    assert capsys.readouterr().out.strip() == str(copied)

    copied.write_text("mine\n")
    assert main(["recipes", "copy", "quickstart/stage1_kd.yml", str(tmp_path)]) == 2
    assert "exists; pass --force to overwrite it" in capsys.readouterr().err
    assert copied.read_text() == "mine\n"
    assert main(["recipes", "copy", "quickstart/stage1_kd", str(tmp_path), "--force"]) == 0
    assert copied.read_bytes() == recipe_path("quickstart/stage1_kd").read_bytes()

    assert main(["recipes", "copy", "opd", str(tmp_path / "new" / "mine.yml")]) == 0
    assert (tmp_path / "new" / "mine.yml").read_bytes() == recipe_path("opd").read_bytes()


def test_recipes_copy_defaults_to_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["recipes", "copy", "stage2_sft"]) == 0
    assert (tmp_path / "stage2_sft.yml").is_file()


def test_recipes_copy_names_an_unknown_recipe_and_lists_the_known_ones(tmp_path, capsys):
    assert main(["recipes", "copy", "stage3", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown recipe 'stage3'" in err
    assert "stage1_kd, stage2_sft, quickstart/opd, quickstart/stage1_kd" in err
    assert list(tmp_path.iterdir()) == []


def test_resolve_prints_the_cached_path(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "proofkd.cli", "resolve", "proofkd:stem-synthetic?n=3"],
        capture_output=True,
        text=True,
        env={**os.environ, "PROOFKD_CACHE": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "data" / "stem-synthetic-train-n3-seed0.jsonl")


def test_resolve_explains_a_bad_reference():
    done = proofkd("resolve", "proofkd:unknown")
    assert done.returncode == 2
    assert "unknown reference 'proofkd:unknown'" in done.stderr


def test_parser_lists_the_commands():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"quickstart", "data", "recipes", "export", "publish", "resolve", "eval"} <= set(commands)
    plain, opd = parser.parse_args(["quickstart"]), parser.parse_args(["quickstart", "--opd"])
    assert (plain.opd, plain.recipe, opd.opd) == (False, None, True)  # the recipe follows --opd unless given


def test_table_format():
    row = {"kl": 1.0, "ce": 2.0, "ce_proof": 3.0, "ce_other": 4.0}
    table = format_table(row, row)
    assert table.splitlines()[0] == "| held-out metric | before | after |"
    assert "| student CE, derivation tokens | 3.000 | 3.000 |" in table


def test_data_build_offline_prints_the_report_and_writes_the_split(tmp_path):
    from tests.fixtures import stage2_sources

    stage2_sources(tmp_path / "sources")
    done = proofkd(
        "data",
        "build",
        "stage2_sft",
        "--source-root",
        str(tmp_path / "sources"),
        "--out",
        str(tmp_path / "data"),
        "--no-tokens",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| Alignment-Lab-AI/Lawyer-Instruct | yes | 9,241 | 32 | -9,209 |" in done.stdout
    assert "Split: 30 train / 2 eval." in done.stdout
    assert (tmp_path / "data" / "stage2_sft" / "train.jsonl").is_file()


def test_data_build_names_a_missing_source(tmp_path):
    done = proofkd("data", "build", "stage2_sft", "--source-root", str(tmp_path), "--out", str(tmp_path / "d"))
    assert done.returncode == 2
    assert "Alignment-Lab-AI/Lawyer-Instruct: no local copy under" in done.stderr
    assert not (tmp_path / "d").exists()


def test_data_list_names_every_manifest():
    done = proofkd("data", "list")
    assert done.returncode == 0
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["opd", "stage1_kd", "stage2_sft"]
