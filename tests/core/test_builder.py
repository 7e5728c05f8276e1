"""The data builder on offline copies of every recipe's sources."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from proofkd.core.data.builder import SourceError, build
from proofkd.core.data.manifest import Manifest, load_manifest
from tests.fixtures import PLANTED, opd_sources, stage1_sources, stage2_sources


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def stage1_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    facts = stage1_sources(root)
    return root, facts


@pytest.fixture(scope="module")
def stage1_build(stage1_root, tiny, tmp_path_factory):
    root, facts = stage1_root
    out = tmp_path_factory.mktemp("built")
    manifest = load_manifest("stage1_kd").model_copy(update={"sequence_len": 256})
    report = build(manifest, out, source_root=root, tokenizer=str(tiny["tokenizer"]), progress=False)
    return report, facts, out / "stage1_kd"


def test_stage1_report_counts_every_row(stage1_build):
    report, facts, _ = stage1_build
    assert len(report.sources) == 12
    merged = facts["clean"] + sum(PLANTED.values())
    assert report.merged_rows == merged
    assert dict(report.dropped) == {"empty_fields": 2, "exact_duplicates": 3}
    assert report.kept_rows == merged - 5
    assert report.candidates["duplicate_prompts"] == 3 + 1
    assert report.candidates["max_tokens 256"] >= 1
    first = report.sources[0]
    assert (first.card_count, first.rows, first.difference) == (2254, 8, 8 - 2254)


def test_stage1_split_is_95_5_disjoint_and_deterministic(stage1_build, stage1_root, tiny, tmp_path):
    report, _, folder = stage1_build
    train, evaluation = rows(folder / "train.jsonl"), rows(folder / "eval.jsonl")
    assert len(evaluation) == math.ceil(0.05 * report.kept_rows) == report.eval_rows
    assert len(train) + len(evaluation) == report.kept_rows
    key = lambda r: (r["question"], r["CoT"])  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in evaluation}
    again = build(load_manifest("stage1_kd"), tmp_path, source_root=stage1_root[0], count_tokens=False, progress=False)
    assert rows(tmp_path / "stage1_kd" / "eval.jsonl") == evaluation
    assert again.kept_rows == report.kept_rows
    assert set(train[0]) == {"question", "CoT", "response", "source"}


def test_the_analysis_finds_the_filter_that_explains_a_gap(stage1_root, tmp_path):
    """With expected_rows set to what dropping duplicate questions gives, the report points at that filter."""
    root, facts = stage1_root
    merged = facts["clean"] + sum(PLANTED.values())
    manifest = load_manifest("stage1_kd").model_copy(update={"expected_rows": merged - 4, "filters": []})
    report = build(manifest, tmp_path, source_root=root, count_tokens=False, progress=False)
    reaching = [labels for labels, kept in report.combinations if kept == merged - 4]
    assert ["duplicate_prompts"] in reaching
    text = report.to_markdown()
    assert "| duplicate_prompts | " + f"{merged - 4:,}" + " | **yes** |" in text
    assert f"the card trained on {merged - 4:,}: differs by +4" in text


def test_stage1_token_statistics(stage1_build):
    report, _, folder = stage1_build
    stats = report.token_stats
    assert stats["rows"] == report.kept_rows and stats["limit"] == 256
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["max"]
    assert stats["over"] >= 1
    assert "exceed 256 and are cut there in training" in (folder / "report.md").read_text()
    saved = json.loads((folder / "report.json").read_text())
    assert saved["kept_rows"] == report.kept_rows
    assert yaml.safe_load((folder / "manifest.yml").read_text())["name"] == "stage1_kd"


def test_stage2_builds_from_the_legal_sample(tmp_path):
    root = tmp_path / "sources"
    total = stage2_sources(root)
    report = build(load_manifest("stage2_sft"), tmp_path / "out", source_root=root, count_tokens=False, progress=False)
    assert report.merged_rows == total and report.kept_rows == total
    train = rows(tmp_path / "out" / "stage2_sft" / "train.jsonl")
    assert set(train[0]) == {"instruction", "input", "output", "source"}
    assert report.train_rows + report.eval_rows == total and report.eval_rows == math.ceil(0.05 * total)


def test_opd_keeps_one_copy_of_each_problem(tmp_path):
    root = tmp_path / "sources"
    unique = opd_sources(root, unique=40, copies=3)
    report = build(load_manifest("opd"), tmp_path / "out", source_root=root, count_tokens=False, progress=False)
    assert dict(report.dropped) == {"empty_fields": 0, "duplicate_prompts": 80}
    assert report.kept_rows == unique and report.eval_rows == 0
    row = rows(tmp_path / "out" / "opd" / "train.jsonl")[0]
    assert set(row) == {"prompt", "answer", "source"}
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"].endswith('after "Answer:".')
    assert row["answer"].lstrip("-").isdigit()


def test_missing_source_names_the_dataset_and_leaves_nothing(stage1_root, tmp_path):
    root, _ = stage1_root
    manifest = load_manifest("stage1_kd")
    sources = [*manifest.sources, manifest.sources[0].model_copy(update={"id": "0xZee/dataset-CoT-Nope-1"})]
    with pytest.raises(SourceError, match="0xZee/dataset-CoT-Nope-1: no local copy under"):
        build(manifest.model_copy(update={"sources": sources}), tmp_path, source_root=root, count_tokens=False)
    assert list(tmp_path.iterdir()) == []


def test_source_with_other_columns_names_the_expected_ones(tmp_path):
    root = tmp_path / "sources"
    stage2_sources(root)
    # Lawyer-Instruct's rows are not Stage-1 rows.
    manifest = Manifest(name="wrong", format="stage1", sources=[{"id": "Alignment-Lab-AI/Lawyer-Instruct"}])
    with pytest.raises(SourceError, match=r"expected the columns \['question', 'CoT', 'response'\], but it has"):
        build(manifest, tmp_path / "out", source_root=root, count_tokens=False, progress=False)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_filters_that_drop_everything_are_refused(tiny, tmp_path):
    root = tmp_path / "sources"
    opd_sources(root, unique=3, copies=1)
    data = load_manifest("opd").model_dump()
    manifest = Manifest.model_validate({**data, "filters": [{"max_tokens": 1}]})
    with pytest.raises(ValueError, match="the filters dropped every row"):
        build(manifest, tmp_path / "out", source_root=root, tokenizer=str(tiny["tokenizer"]), progress=False)
    assert not (tmp_path / "out").exists()


def test_token_filter_without_a_tokenizer_says_how_to_give_one(tmp_path):
    root = tmp_path / "sources"
    opd_sources(root, unique=3, copies=1)
    manifest = Manifest.model_validate({**load_manifest("opd").model_dump(), "filters": [{"max_tokens": 64}]})
    with pytest.raises(ValueError, match="needs a tokenizer: pass --tokenizer"):
        build(manifest, tmp_path / "out", source_root=root, count_tokens=False, progress=False)


def test_manifest_errors():
    with pytest.raises(FileNotFoundError, match="known: opd, stage1_kd, stage2_sft"):
        load_manifest("stage3")
    with pytest.raises(ValueError, match="max_tokens filter needs a positive limit"):
        Manifest(name="x", format="stage1", sources=[], filters=[{"max_tokens": 0}])
    assert (
        Manifest(name="x", format="stage1", sources=[], filters=["empty_fields", {"max_tokens": 9}]).filters[1].value
        == 9
    )
