"""`proofkd export` and `proofkd publish --dry-run` given a checkpoint or `--out` a user can get wrong.

Each case: exit 2, one message naming the file and the fix, no traceback, and no `--out` folder made.
The checkpoint cases fail before any tensor is read, so they need no model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from proofkd.cli import main
from tests.helpers import make_tiny_qwen3

COMMANDS = {
    "export": lambda ckpt, out: ["export", str(ckpt), "--out", str(out), "--quants", "F16"],
    "publish": lambda ckpt, out: [
        "publish",
        str(ckpt),
        "--repo",
        "me/tiny",
        "--base-model",
        "me/base",
        "--out",
        str(out),
        "--dry-run",
    ],
}


def refused(capsys, command: str, checkpoint: Path, out: Path) -> str:
    code = main(COMMANDS[command](checkpoint, out))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"proofkd {command}:")]
    assert len(lines) == 1, err
    return lines[0]


def broken_checkpoint(root: Path, config: str | bytes) -> Path:
    folder = root / "ckpt"
    folder.mkdir()
    if isinstance(config, bytes):
        (folder / "config.json").write_bytes(config)
    else:
        (folder / "config.json").write_text(config, encoding="utf-8")
    return folder


CHECKPOINTS = [
    ("missing", None, "does not exist: pass the folder a training run saved"),
    ("no config", "", "is not a model folder (no config.json): pass the folder save_pretrained wrote"),
    ("truncated", '{"architectures": ["Qwen3ForCausalLM"], "hidden_size": 2', "is not valid JSON: line 1, column"),
    ("not UTF-8", b'{"architectures": ["\xff"]}', "is not UTF-8 text (byte"),
    ("a list", "[1, 2]", "holds list, not a JSON object"),
    ("unsupported", json.dumps({"architectures": ["GPT2LMHeadModel"]}), "architecture GPT2LMHeadModel cannot be"),
    ("no architecture", "{}", "architecture (none named) cannot be converted; supported: LlamaForCausalLM"),
    ("no tensors", json.dumps({"architectures": ["Qwen3ForCausalLM"]}), "has no model.safetensors"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case, config, message", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_a_bad_checkpoint_is_named_and_leaves_no_out_folder(tmp_path, capsys, command, case, config, message):
    if case == "missing":
        checkpoint = tmp_path / "ckpt"
    else:
        checkpoint = broken_checkpoint(tmp_path, config)
        if case == "no config":
            (checkpoint / "config.json").unlink()
    out = tmp_path / "out"
    line = refused(capsys, command, checkpoint, out)
    assert message in line
    assert str(checkpoint) in line
    assert not out.exists()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_tiny_qwen3(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("command", COMMANDS)
def test_out_below_a_file_is_refused_before_any_work(tmp_path, capsys, checkpoint, command):
    (tmp_path / "notes.txt").write_text("keep me")
    line = refused(capsys, command, checkpoint, tmp_path / "notes.txt" / "gguf")
    assert "notes.txt is a file, not a folder, so nothing can be written under it. Pass another --out" in line
    assert (tmp_path / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unwritable_out_is_refused_before_any_work(tmp_path, capsys, checkpoint, command, monkeypatch):
    """Root ignores permissions, so the refusal is checked through `os.access` (and for real below)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    line = refused(capsys, command, checkpoint, locked / "gguf")
    assert f"the folder {locked} is not writable by this user. Pass an --out you can write to" in line
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
def test_a_read_only_out_for_real(tmp_path, capsys, checkpoint):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = refused(capsys, "export", checkpoint, locked / "gguf")
    finally:
        locked.chmod(0o755)
    assert "is not writable by this user" in line
