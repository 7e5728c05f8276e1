"""A training run's log, `OUTPUT_DIR/proofkd_log.jsonl`: one JSON object per logged record, with its step.

The plugins write it (`proofkd.plugin.trainer.JsonlLogCallback`); the
rehearsal, the plots and the benchmarks read it here. A run killed while
writing can leave its last line cut short: the reader skips such a line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LOG_FILE = "proofkd_log.jsonl"


def read_run_log(output_dir: str | os.PathLike) -> list[dict]:
    """Every whole record of the run's log, in order; [] if the run logged nothing yet."""
    path = Path(output_dir) / LOG_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def training_records(records: list[dict]) -> list[dict]:
    """The records of training steps (those with a loss), leaving out evaluation and the run's summary."""
    return [r for r in records if "loss" in r and "eval_loss" not in r]
