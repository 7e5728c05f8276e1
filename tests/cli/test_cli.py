"""The `proofkd` command line: the quickstart chain on tiny models, and `resolve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import tiny_recipe

import yaml
from proofkd.cli import build_parser
from proofkd.cli.quickstart import format_table


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


def test_quickstart_without_a_recipe_says_where_to_run(tmp_path):
    done = proofkd("quickstart", cwd=tmp_path)
    assert done.returncode != 0
    assert "run `proofkd quickstart` from the repository root, or pass --recipe" in done.stderr


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
    assert {"quickstart", "data", "export", "publish", "resolve", "eval"} <= set(commands)
    plain, opd = parser.parse_args(["quickstart"]), parser.parse_args(["quickstart", "--opd"])
    assert (plain.opd, plain.recipe, opd.opd) == (False, None, True)  # the recipe follows --opd unless given


def test_table_format():
    row = {"kl": 1.0, "ce": 2.0, "ce_proof": 3.0, "ce_other": 4.0}
    table = format_table(row, row)
    assert table.splitlines()[0] == "| held-out metric | before | after |"
    assert "| student CE, derivation tokens | 3.000 | 3.000 |" in table


def test_data_build_offline_prints_the_report_and_writes_the_split(tmp_path):
    from fixtures import stage2_sources

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
