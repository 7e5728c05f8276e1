"""A Hugging Face token planted where a user keeps one never shows up in anything proofkd writes or says.

The token sits in `HF_TOKEN` and in a stored login (`$HF_HOME/token` and
`stored_tokens`, pointed at a temporary folder). `proofkd publish --dry-run`,
`proofkd eval` and `proofkd verify` on a tiny model, `proofkd data build` and
the OPD quickstart then run in process, and the test searches their stdout, stderr, every log record
(of any logger, at any level) and every byte of every file written under
their output and staging folders.
"""

from __future__ import annotations

import json
import logging
import random
import string

import pytest

from proofkd.cli import main
from tests.fixtures import stage2_sources
from tests.helpers import make_tiny_qwen3


@pytest.fixture
def secret(tmp_path, monkeypatch) -> str:
    from huggingface_hub import constants

    token = "hf_" + "".join(random.SystemRandom().choices(string.ascii_letters, k=34))
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "token").write_text(token)
    (home / "stored_tokens").write_text(f"[proofkd-test]\nhf_token = {token}\n")
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HF_HOME", str(home))
    # huggingface_hub reads HF_HOME once, at import: point its paths at the planted login too.
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    from huggingface_hub import get_token

    assert get_token() == token  # the planted login is the one a real run would find
    return token


class Records(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.text: list[str] = []

    def emit(self, record):
        self.text.append(f"{record.name} {record.levelname} {record.getMessage()} {record.exc_text or ''}")


@pytest.fixture
def records():
    """Every record of every logger: proofkd's do not propagate to the root, so its logger is watched as well."""
    handler = Records()
    loggers = [logging.getLogger(), logging.getLogger("proofkd")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def assert_nowhere(token: str, captured, records: Records, *folders) -> int:
    """The token in no output, record or file; returns how many files were searched."""
    assert token not in captured.out and token not in captured.err
    assert records.text and not [t for t in records.text if token in t]
    searched = 0
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert token.encode() not in path.read_bytes(), f"the token is in {path}"
                searched += 1
    return searched


def test_data_build_never_writes_the_token(secret, records, tmp_path, capsys):
    root, out = tmp_path / "sources", tmp_path / "data"
    stage2_sources(root)
    code = main(["data", "build", "stage2_sft", "--source-root", str(root), "--out", str(out), "--no-tokens"])
    assert code == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out
    assert assert_nowhere(secret, captured, records, out) == 5
    assert json.loads((out / "stage2_sft" / "report.json").read_text())["kept_rows"] > 0


@pytest.mark.slow
def test_publish_dry_run_never_writes_the_token(secret, records, tmp_path, capsys):
    model = make_tiny_qwen3(tmp_path)
    staging = tmp_path / "staging"
    args = ["publish", str(model), "--repo", "me/Tiny-GGUF", "--base-model", "me/Tiny", "--quants", "Q8_0"]
    args += ["--out", str(staging)]
    code = main([*args, "--dry-run", "--threads", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert "would upload to https://huggingface.co/me/Tiny-GGUF" in captured.out
    assert assert_nowhere(secret, captured, records, staging, model) >= 3


@pytest.mark.slow
def test_eval_and_verify_never_write_the_token(secret, records, tmp_path, capsys):
    from proofkd.export.convert import convert

    model = make_tiny_qwen3(tmp_path)
    f16 = convert(model, tmp_path / "gguf" / "tiny-F16.gguf", progress=False)
    out = tmp_path / "eval"
    models = ["--model", f"hf={model}", "--model", f"gguf={f16}"]
    code = main(["eval", *models, "--tasks", "proofkd_legal_mc", "--limit", "2", "--out", str(out)])
    assert code == 0
    figures = tmp_path / "verify" / "figures.json"
    code = main(["verify", str(f16), "--reference", str(model), "--window", "64", "--json", str(figures)])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    assert "| tiny-F16.gguf | F16 |" in captured.out
    assert assert_nowhere(secret, captured, records, out, tmp_path / "gguf", figures.parent) >= 8


@pytest.mark.slow
def test_the_opd_quickstart_never_writes_the_token(secret, records, tmp_path, capfd):
    """The quickstart's training (its own `axolotl train` process, whose output `capfd` holds too), held-out
    measurement and summary, on the OPD twin (the shorter of the two)."""
    from proofkd.cli.quickstart import run_opd
    from tests.helpers import REPO

    out = tmp_path / "quickstart"
    run_opd(REPO / "yaml" / "quickstart" / "opd.yml", out, heldout="proofkd:arith-dapo?split=heldout&n=4&seed=0")
    captured = capfd.readouterr()
    assert "proofkd quickstart --opd" in captured.out and "train_runtime" in captured.out + captured.err
    assert assert_nowhere(secret, captured, records, out) >= 10
