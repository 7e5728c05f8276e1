"""Publishing: the card, the upload plan, refusal on a failed file, and dry runs (`tests/test_secrets.py` keeps the token secret).

The Hub is replaced by a fake at the `HfApi` boundary that records what it is asked to do."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from proofkd.core.data.stem import generate
from proofkd.export import publish as publish_module
from proofkd.export import verify as verify_module
from proofkd.export.convert import ConversionError
from proofkd.export.publish import PublishError, parse_quants, publish
from tests.helpers import make_tiny_qwen3, pretrain

pytestmark = pytest.mark.slow


class FakeHub:
    def __init__(self):
        self.calls = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))

        class Commit:
            commit_url = f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"

        return Commit()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = make_tiny_qwen3(tmp_path_factory.mktemp("pub"))
    return pretrain(model, generate("train", 120, seed=6), steps=40)


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---")[1])


def test_publish_uploads_the_verified_files_and_card(checkpoint, tmp_path):
    hub = FakeHub()
    plan = publish(
        checkpoint,
        "someone/Tiny-Qwen3-GGUF",
        quants=["Q4_K_M", "F16"],
        out_dir=tmp_path,
        base_model="someone/Tiny-Qwen3",
        license="apache-2.0",
        threads=2,
        api=hub,
        progress=False,
    )
    report = json.loads((tmp_path / "verification.json").read_text())
    # The importance matrix is published when the file kept for Q4_K_M was quantised with it.
    weighted = ["Tiny-Qwen3.imatrix.gguf"] if report["imatrix"]["types"] == ["Q4_K_M"] else []
    assert plan.files == ["Tiny-Qwen3-Q4_K_M.gguf", "Tiny-Qwen3-F16.gguf", *weighted, "README.md"]
    (name, create), (name2, upload) = hub.calls
    assert (name, name2) == ("create_repo", "upload_folder")
    assert create == {"repo_id": "someone/Tiny-Qwen3-GGUF", "repo_type": "model", "private": False, "exist_ok": True}
    assert upload["allow_patterns"] == plan.files and upload["folder_path"] == str(tmp_path)
    assert "Q4_K_M, F16" in upload["commit_message"]
    assert plan.url.endswith("/commit/abc")
    card = (tmp_path / "README.md").read_text()
    assert ("`Tiny-Qwen3.imatrix.gguf`" in card) == bool(weighted)
    meta = front_matter(card)
    assert meta["base_model"] == "someone/Tiny-Qwen3" and meta["base_model_relation"] == "quantized"
    assert {"gguf", "llama.cpp", "qwen3"} <= set(meta["tags"]) and meta["license"] == "apache-2.0"
    assert "| Tiny-Qwen3-Q4_K_M.gguf | Q4_K_M |" in card and "| pass |" in card
    assert 'Llama.from_pretrained(repo_id="someone/Tiny-Qwen3-GGUF", filename="Tiny-Qwen3-Q4_K_M.gguf")' in card
    assert "llama-cli -hf someone/Tiny-Qwen3-GGUF:Q4_K_M" in card
    assert "ollama run hf.co/someone/Tiny-Qwen3-GGUF:Q4_K_M" in card
    files_table = card.split("## Files")[1].split("##")[0]
    # bits per weight: size over parameters, so F16 sits just above 16 and Q4_K_M well below it
    bits = {
        row.split("|")[2].strip(): float(row.split("|")[4])
        for row in files_table.splitlines()
        if row.startswith("| ") and ".gguf" in row
    }
    assert 16 <= bits["F16"] < 16.5 and bits["Q4_K_M"] < 9
    assert "KLD p99.9" in card and "same top" in card


def test_a_failed_file_stops_publishing_unless_skipped(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(verify_module.KLD_BOUNDS, "Q4_K_M", 0.0)  # nothing can pass this
    hub = FakeHub()
    with pytest.raises(
        PublishError, match=r"Tiny-Q4_K_M.gguf \(mean KLD .* exceeds the Q4_K_M bound 0\) failed verification"
    ):
        publish(
            checkpoint,
            "me/Tiny-GGUF",
            quants=["Q4_K_M", "Q8_0"],
            out_dir=tmp_path,
            base_model="me/Tiny",
            api=hub,
            progress=False,
        )
    assert hub.calls == []
    plan = publish(
        checkpoint,
        "me/Tiny-GGUF",
        quants=["Q4_K_M", "Q8_0"],
        out_dir=tmp_path,
        base_model="me/Tiny",
        api=hub,
        skip_failed=True,
        progress=False,
    )
    assert plan.files == ["Tiny-Q8_0.gguf", "README.md"]  # no published file used the importance matrix
    assert hub.calls[1][1]["allow_patterns"] == plan.files
    assert "Q4_K_M" not in (tmp_path / "README.md").read_text().split("## Use")[0].split("## Files")[1]


def test_dry_run_uploads_nothing_and_says_what_it_would(checkpoint, tmp_path):
    hub = FakeHub()
    plan = publish(
        checkpoint,
        "me/Tiny-GGUF",
        quants=["Q8_0"],
        out_dir=tmp_path,
        base_model="me/Tiny",
        dry_run=True,
        api=hub,
        progress=False,
    )
    assert hub.calls == []
    text = plan.describe()
    assert text.startswith("would upload to https://huggingface.co/me/Tiny-GGUF:")
    assert "Tiny-Q8_0.gguf" in text and "README.md" in text
    # F16 was only the source of the quantised file: it is not left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "Tiny-Q8_0.gguf", "verification.json"]
    # Q8_0 takes no importance matrix, so none was computed


def test_no_token_is_refused_before_any_work(checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(publish_module, "_token_available", lambda: False)
    with pytest.raises(PublishError, match="no Hugging Face token: set HF_TOKEN or run `hf auth login`"):
        publish(checkpoint, "me/Tiny-GGUF", quants=["Q8_0"], out_dir=tmp_path, base_model="me/Tiny")
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("repo", "base_model", "message"),
    [
        ("no-owner", "me/Tiny", "--repo must be 'owner/name', not 'no-owner'"),
        ("you/not a repo id", "me/Tiny", "--repo 'you/not a repo id' is not a valid Hub repository id"),
        ("me/bad--name", "me/Tiny", "--repo 'me/bad--name' is not a valid Hub repository id"),
        ("me/Tiny-GGUF", None, "--base-model is missing: name the Hub repository"),
        ("me/Tiny-GGUF", "me/x y", "--base-model 'me/x y' is not a valid Hub repository id"),
    ],
)
def test_a_bad_repo_id_is_refused_before_any_work_in_a_dry_run_too(
    checkpoint, tmp_path, monkeypatch, repo, base_model, message
):
    def no_work(*args, **kwargs):
        raise AssertionError("export ran before the arguments were checked")

    monkeypatch.setattr(publish_module, "export", no_work)
    with pytest.raises(PublishError, match=re.escape(message)):
        publish(checkpoint, repo, base_model=base_model, out_dir=tmp_path / "out", dry_run=True)
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(PublishError, match="unknown quantisation"):
        parse_quants("Q4_K_M,Q2_K")
    with pytest.raises(ConversionError, match="is not a model folder"):
        publish(tmp_path, "me/x", base_model="me/y", dry_run=True)
