"""lm-eval hooks of the competition-math task, loaded by `!function utils.<name>`: documents and per-sample scores.

The problems come from `proofkd.evals.competition` and are scored with DAPO's
reward, the one on-policy distillation trains with.
"""

import datasets

from proofkd.evals import data, scoring


def load_competition(**metadata):
    return {"test": datasets.Dataset.from_list(data.competition_docs())}


def process_results(doc, results):
    return scoring.dapo_scores(results[0], doc["answer"])
