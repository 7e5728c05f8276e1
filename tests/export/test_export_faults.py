"""Interrupted exports: Ctrl-C while quantising stops at once, and a killed export's leftovers are gone after the
next run, whose `verification.json` lists exactly the files in the folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from proofkd.export.publish import export
from tests.helpers import make_tiny_qwen3

pytestmark = pytest.mark.slow

ENV = {**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}


def wait_for(condition, what: str, seconds: float = 120.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"gave up waiting for {what}")


def test_ctrl_c_while_quantising_kills_the_quantiser_and_leaves_no_file(tmp_path):
    # The stand-in quantiser ignores SIGINT, as llama.cpp's log callback swallows it in the real one.
    child = textwrap.dedent(f"""
        import json, os, signal, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        open({str(tmp_path / "out" / ".quantising")!r}, 'w').write(str(os.getpid()))
        print(json.dumps({{"done": 1, "total": 9}}), flush=True)
        time.sleep(300)
    """)
    script = textwrap.dedent(f"""
        import sys
        from proofkd.export import quantize as q
        q._child_command = lambda arguments: [sys.executable, "-c", {child!r}]
        q.quantize({str(tmp_path / "in.gguf")!r}, {str(tmp_path / "out" / "model-Q8_0.gguf")!r}, "Q8_0", progress=False)
    """)
    (tmp_path / "out").mkdir()
    parent = subprocess.Popen([sys.executable, "-c", script], env=ENV, stderr=subprocess.PIPE, text=True)
    marker = tmp_path / "out" / ".quantising"
    pid = int(wait_for(lambda: marker.is_file() and marker.read_text(), "the quantiser to start"))
    parent.send_signal(signal.SIGINT)
    _, err = parent.communicate(timeout=60)
    assert parent.returncode != 0 and "KeyboardInterrupt" in err
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    marker.unlink()
    assert list((tmp_path / "out").iterdir()) == []


def test_after_a_killed_export_the_next_run_leaves_no_partial_file(tmp_path):
    model = make_tiny_qwen3(tmp_path)
    out = tmp_path / "gguf"
    command = [sys.executable, "-m", "proofkd.cli", "export", str(model), "--out", str(out), "--threads", "2"]
    killed = subprocess.Popen([*command, "--quants", "Q8_0,Q4_K_M"], env=ENV, stderr=subprocess.DEVNULL)

    def partial_files():
        return sorted(out.glob(".*.partial-*")) if out.is_dir() else []

    wait_for(partial_files, "the export to start writing")
    killed.kill()
    killed.wait()
    assert partial_files(), "the kill left no partial file, so the test shows nothing"

    done = export(model, out, ["Q8_0"], threads=2, progress=False)
    assert partial_files() == [] and done.results[0].passed
    report = json.loads((out / "verification.json").read_text())
    listed = {entry["file"] for entry in report["files"]} | set(report["unverified"])
    assert listed == {p.name for p in out.glob("model-*.gguf")}
    assert {entry["file"] for entry in report["files"]} >= {"model-Q8_0.gguf"}


def test_verification_json_keeps_an_earlier_runs_unchanged_files_and_drops_missing_ones(tmp_path):
    model = make_tiny_qwen3(tmp_path)
    out = tmp_path / "gguf"
    export(model, out, ["Q8_0", "Q4_K_M"], name="tiny", threads=2, progress=False)
    stray = out / "tiny-Q5_K_M.gguf"
    stray.write_bytes(b"a file no run verified")
    (out / "tiny-Q4_K_M.gguf").unlink()
    export(model, out, ["F16"], name="tiny", threads=2, progress=False)
    report = json.loads((out / "verification.json").read_text())
    assert [entry["file"] for entry in report["files"]] == ["tiny-F16.gguf", "tiny-Q8_0.gguf"]
    assert report["unverified"] == ["tiny-Q5_K_M.gguf"]
    assert sorted(p.name for p in out.glob("tiny-*.gguf")) == ["tiny-F16.gguf", "tiny-Q5_K_M.gguf", "tiny-Q8_0.gguf"]


def test_an_earlier_entry_is_dropped_when_its_file_changed(tmp_path):
    model = make_tiny_qwen3(tmp_path)
    out = tmp_path / "gguf"
    export(model, out, ["Q8_0"], name="tiny", threads=2, progress=False)
    with (out / "tiny-Q8_0.gguf").open("ab") as handle:
        handle.write(b"\0")
    export(model, out, ["F16"], name="tiny", threads=2, progress=False)
    report = json.loads((out / "verification.json").read_text())
    assert [entry["file"] for entry in report["files"]] == ["tiny-F16.gguf"]
    assert report["unverified"] == ["tiny-Q8_0.gguf"]
