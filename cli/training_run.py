"""Running `axolotl train` from a proofkd command, in its own process, as a user would from the shell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


class TrainingStopped(RuntimeError):
    """`axolotl train` exited with an error; its own messages are already on the console."""


def axolotl_train(recipe: Path, output: Path | None = None, prepared: Path | None = None) -> None:
    """`axolotl train recipe` with the plain Python launcher (one process, as on a CPU), telemetry off."""
    command = [sys.executable, "-m", "axolotl.cli.main", "train", str(recipe), "--launcher", "python"]
    if output is not None:
        command += ["--output-dir", str(output)]
    if prepared is not None:
        command += ["--dataset-prepared-path", str(prepared)]
    env = dict(os.environ)
    env.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
    code = subprocess.run(command, env=env).returncode
    if code != 0:
        raise TrainingStopped(f"axolotl train {recipe} stopped with exit code {code}; its messages are above")
