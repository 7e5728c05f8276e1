"""The evaluation wing: lm-eval tasks and the side-by-side report. Imports nothing from `proofkd.plugin`.

`TASKS_DIR` is the folder to give lm-eval as `--include_path` (or
`TaskManager(include_path=...)`); it is found through the package, so it is
the same from any working directory and in an installed wheel.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
