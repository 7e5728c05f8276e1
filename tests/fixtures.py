"""Offline copies of every recipe's sources, in each source's real schema, laid out as the
builder's `--source-root` expects (`<root>/<hub id>.jsonl`).

Stage 1: 12 small sets named like the card's, from the STEM generator, with
known defects planted: exact duplicates, a duplicate question with another
derivation, empty fields, and one very long derivation. Stage 2: the packaged
legal sample (Lawyer-Instruct's schema). OPD: arithmetic in DAPO's schema,
repeated as the published parquet repeats its problems.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from proofkd.core.data import arith, stem
from proofkd.core.data.manifest import load_manifest
from proofkd.core.embedded import LEGAL_SAMPLE

PER_SOURCE = 5
PLANTED = {"exact_duplicates": 3, "duplicate_prompts": 1, "empty_fields": 2}


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def stage1_sources(root: Path) -> dict:
    """Write the 12 sets; return what was planted and the clean row count."""
    manifest = load_manifest("stage1_kd")
    pool = stem.generate("train", PER_SOURCE * len(manifest.sources), seed=17)
    questions = {r["question"] for r in pool}
    clean = 0
    for i, source in enumerate(manifest.sources):
        rows = [{k: r[k] for k in ("question", "CoT", "response")} for r in pool[i * PER_SOURCE : (i + 1) * PER_SOURCE]]
        clean += len(rows)
        if i == 0:
            rows += [dict(rows[0]), dict(rows[1]), dict(rows[1])]  # 3 exact duplicates
        if i == 1:
            rows.append({**rows[0], "CoT": rows[0]["CoT"] + "\nChecked once more."})  # same question, new derivation
        if i == 2:
            rows.append({"question": "What is 2 + 2?", "CoT": "", "response": "4"})  # no derivation
            rows.append({"question": "   ", "CoT": "1 + 1 = 2", "response": "2"})  # no question
        if i == 3:
            long = next(r for r in stem.generate("train", 80, seed=99) if r["question"] not in questions)
            rows.append(
                {"question": long["question"], "CoT": "\n".join([long["CoT"]] * 40), "response": long["response"]}
            )
            clean += 1  # a long derivation is not a defect: it is cut at sequence_len in training
        _write(root / f"{source.id}.jsonl", rows)
    return {"clean": clean, "planted": dict(PLANTED)}


def stage2_sources(root: Path) -> int:
    manifest = load_manifest("stage2_sft")
    target = root / f"{manifest.sources[0].id}.jsonl"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(LEGAL_SAMPLE, target)
    return sum(1 for _ in LEGAL_SAMPLE.open())


def opd_sources(root: Path, unique: int = 40, copies: int = 3) -> int:
    manifest = load_manifest("opd")
    rows = arith.generate("train", unique, seed=5)
    _write(root / f"{manifest.sources[0].id}.jsonl", rows * copies)
    return unique
