"""Ctrl-C during the quickstart's training: the quickstart and the `axolotl train` process it started both stop,
and no summary is written for a run that did not finish."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def processes_naming(text: str) -> list[str]:
    """Command lines of this machine's processes that mention `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    line = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if text in line:
                found.append(line)
    return found


def test_ctrl_c_while_training_stops_the_quickstart_and_its_trainer(tmp_path):
    out = tmp_path / "quickstart"
    env = {**os.environ, "AXOLOTL_DO_NOT_TRACK": "1"}
    command = [sys.executable, "-m", "proofkd.cli", "quickstart", "--opd", "--output-dir", str(out)]
    quickstart = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    trainer = f"--output-dir {out / 'student'}"
    deadline = time.monotonic() + 600
    while not processes_naming(trainer):
        assert quickstart.poll() is None, quickstart.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the quickstart never started training"
        time.sleep(0.5)
    time.sleep(5)  # into the trainer's start-up
    quickstart.send_signal(signal.SIGINT)  # to the quickstart alone: it must stop the trainer itself
    _, err = quickstart.communicate(timeout=120)
    assert quickstart.returncode == 130, err[-3000:]
    assert err.rstrip().endswith("proofkd quickstart: interrupted; the files it had finished are kept")
    assert "Traceback" not in err
    time.sleep(1)
    assert processes_naming(trainer) == []
    assert not (out / "summary.json").exists() and not (out / "summary.md").exists()
