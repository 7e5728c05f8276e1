"""lm-eval hooks of the STEM tasks, loaded by `!function utils.<name>`: their documents and per-sample scores.

lm-eval executes this file by path, so it only forwards to `proofkd.evals`,
where the rules live and are tested.
"""

import datasets

from proofkd.evals import data, scoring


def load_synthetic(**metadata):
    return {"test": datasets.Dataset.from_list(data.stem_synthetic_docs())}


def load_heldout(**metadata):
    return {"test": datasets.Dataset.from_list(data.stem_heldout_docs(metadata))}


def process_results(doc, results):
    return scoring.stem_scores(results[0], doc["reference"])
