"""The documents of the proofkd tasks: offline sets made here, held-out sets read from the data builder's output.

Every loader returns plain dicts with the columns the task YAMLs read
(`prompt` is the exact text the model continues, rendered with the same
templates as training; `reference` is what a generation is scored against).
The task folders' `utils.py` turn them into `datasets.Dataset`s for lm-eval.

The held-out tasks read `<data_dir>/<recipe>/eval.jsonl`, the evaluation split
that `proofkd data build <recipe>` writes. `data_dir` comes from lm-eval's task
metadata (`TaskManager(metadata={"data_dir": ...})` or `--metadata`), else from
`$PROOFKD_DATA_DIR`, else it is `./data`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from proofkd.core.data import stem
from proofkd.core.templates import render_dapo_prompt, render_stage1_prompt, render_stage2
from proofkd.evals import competition, scoring

STEM_SYNTHETIC_COUNT = 40
STEM_SYNTHETIC_SEED = 31337


class MissingEvalSplitError(FileNotFoundError):
    """A held-out task whose recipe's evaluation split has not been built."""


def data_dir(metadata: dict) -> Path:
    """Where built recipe data lives: metadata `data_dir`, else `$PROOFKD_DATA_DIR`, else `./data`."""
    chosen = metadata.get("data_dir") or os.environ.get("PROOFKD_DATA_DIR") or "data"
    return Path(chosen).expanduser().resolve()


def read_jsonl(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def eval_split(recipe: str, metadata: dict) -> list[dict]:
    """The rows of `<data_dir>/<recipe>/eval.jsonl`, or an error that says how to build them."""
    path = data_dir(metadata) / recipe / "eval.jsonl"
    if not path.is_file():
        raise MissingEvalSplitError(
            f"{path} does not exist: the held-out task reads the evaluation split of the {recipe} recipe. "
            f"Build it with `proofkd data build {recipe}` (it writes data/{recipe}/eval.jsonl), or point the task "
            f'at another data folder with --metadata \'{{"data_dir": "/path/to/data"}}\' or PROOFKD_DATA_DIR.'
        )
    rows = read_jsonl(path)
    if not rows:
        raise MissingEvalSplitError(f"{path} is empty; rebuild it with `proofkd data build {recipe}`")
    return rows


def stem_doc(question: str, reference: str, domain: str = "") -> dict:
    return {"prompt": render_stage1_prompt(question), "question": question, "reference": reference, "domain": domain}


def stem_synthetic_docs() -> list[dict]:
    """The offline STEM set: held-out generated problems, scored against their exact answers."""
    rows = stem.generate("heldout", STEM_SYNTHETIC_COUNT, seed=STEM_SYNTHETIC_SEED)
    return [stem_doc(row["question"], row["answer"], row["domain"]) for row in rows]


def stem_heldout_docs(metadata: dict) -> list[dict]:
    """The Stage-1 recipe's evaluation split, scored against each row's `response`."""
    rows = eval_split("stage1_kd", metadata)
    return [stem_doc(row["question"], row["response"], row.get("source", "")) for row in rows]


def legal_prompt(instruction: str, extra_input: str = "") -> str:
    """The Stage-2 prompt; a non-empty `input` joins the instruction on a new line, as the data builder does."""
    question = f"{instruction}\n{extra_input}" if extra_input.strip() else instruction
    return render_stage2(question, "").text


def legal_qa_docs(path: Path) -> list[dict]:
    """The offline legal questions: `question`, `reference`, `terms` (each `term|variant|...`).

    `terms` keeps only the key terms that the question does not already use, so an answer that merely
    restates the question earns no coverage.
    """
    docs = []
    for row in read_jsonl(path):
        terms = [term for term in row["terms"] if scoring.term_coverage(row["question"], [term]) == 0.0]
        if not terms:
            raise ValueError(f"{path}: every key term of {row['id']!r} is in its question; list terms the answer adds")
        docs.append(
            {
                "prompt": legal_prompt(row["question"]),
                "question": row["question"],
                "reference": row["reference"],
                "terms": terms,
            }
        )
    return docs


def legal_heldout_docs(metadata: dict) -> list[dict]:
    """The Stage-2 recipe's evaluation split, scored against each row's `output`."""
    rows = eval_split("stage2_sft", metadata)
    return [
        {
            "prompt": legal_prompt(row["instruction"], row.get("input") or ""),
            "question": row["instruction"],
            "reference": row["output"],
        }
        for row in rows
    ]


def legal_mc_docs(path: Path) -> list[dict]:
    """The multiple-choice legal questions: `prompt`, `choices` (four), `label` (index of the right one)."""
    docs = []
    for row in read_jsonl(path):
        if len(row["choices"]) != 4 or not 0 <= row["label"] < 4:
            raise ValueError(f"{path}: question {row['id']!r} needs four choices and a label in 0..3")
        docs.append({"prompt": legal_prompt(row["question"]), **row})
    return docs


def competition_docs() -> list[dict]:
    """The offline competition set, prompted in DAPO's format."""
    return [
        {"prompt": render_dapo_prompt(p.problem), "problem": p.problem, "kind": p.kind, "answer": str(p.answer)}
        for p in competition.generate()
    ]
