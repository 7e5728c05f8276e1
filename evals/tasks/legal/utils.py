"""lm-eval hooks of the legal tasks, loaded by `!function utils.<name>`: their documents and per-sample scores.

The offline sets are the JSONL files beside this one, found through this
file's own path so that any working directory works.
"""

from pathlib import Path

import datasets

from proofkd.evals import data, scoring

HERE = Path(__file__).resolve().parent


def load_qa(**metadata):
    return {"test": datasets.Dataset.from_list(data.legal_qa_docs(HERE / "legal_qa.jsonl"))}


def load_qa_heldout(**metadata):
    return {"test": datasets.Dataset.from_list(data.legal_heldout_docs(metadata))}


def load_mc(**metadata):
    return {"test": datasets.Dataset.from_list(data.legal_mc_docs(HERE / "legal_mc.jsonl"))}


def process_qa(doc, results):
    return scoring.legal_scores(results[0], doc["reference"], doc["terms"])


def process_qa_heldout(doc, results):
    return scoring.legal_scores(results[0], doc["reference"])
