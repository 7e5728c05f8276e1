"""Publishing: the card, the upload plan, refusal on a failed file, and dry runs (`tests/test_secrets.py` keeps the token secret).

The Hub is replaced by a fake at the `HfApi` boundary that records what it is asked to do."""

from __future__ import annotations

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
    assert plan.files == ["Tiny-Qwen3-Q4_K_M.gguf", "Tiny-Qwen3-F16.gguf", "README.md"]
    (name, create), (name2, upload) = hub.calls
    assert (name, name2) == ("create_repo", "upload_folder")
    assert create == {"repo_id": "someone/Tiny-Qwen3-GGUF", "repo_type": "model", "private": False, "exist_ok": True}
    assert upload["allow_patterns"] == plan.files and upload["folder_path"] == str(tmp_path)
    assert "Q4_K_M, F16" in upload["commit_message"]
    assert plan.url.endswith("/commit/abc")
    card = (tmp_path / "README.md").read_text()
    meta = front_matter(card)
    assert meta["base_model"] == "someone/Tiny-Qwen3" and meta["base_model_relation"] == "quantized"
    assert {"gguf", "llama.cpp", "qwen3"} <= set(meta["tags"]) and meta["license"] == "apache-2.0"
    assert "| Tiny-Qwen3-Q4_K_M.gguf | Q4_K_M |" in card and "| pass |" in card
    assert 'Llama.from_pretrained(repo_id="someone/Tiny-Qwen3-GGUF", filename="Tiny-Qwen3-Q4_K_M.gguf")' in card
    assert "llama-cli -hf someone/Tiny-Qwen3-GGUF:Q4_K_M" in card


def test_a_failed_file_stops_publishing_unless_skipped(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(verify_module.KL_BOUNDS, "Q4_K_M", 0.0)  # nothing can pass this
    hub = FakeHub()
    with pytest.raises(
        PublishError, match=r"Tiny-Q4_K_M.gguf \(KL .* exceeds the Q4_K_M bound 0\) failed verification"
    ):
        publish(checkpoint, "me/Tiny-GGUF", quants=["Q4_K_M", "Q8_0"], out_dir=tmp_path, api=hub, progress=False)
    assert hub.calls == []
    plan = publish(
        checkpoint,
        "me/Tiny-GGUF",
        quants=["Q4_K_M", "Q8_0"],
        out_dir=tmp_path,
        api=hub,
        skip_failed=True,
        progress=False,
    )
    assert plan.files == ["Tiny-Q8_0.gguf", "README.md"]
    assert hub.calls[1][1]["allow_patterns"] == ["Tiny-Q8_0.gguf", "README.md"]
    assert "Q4_K_M" not in (tmp_path / "README.md").read_text().split("## Use")[0].split("## Files")[1]


def test_dry_run_uploads_nothing_and_says_what_it_would(checkpoint, tmp_path):
    hub = FakeHub()
    plan = publish(checkpoint, "me/Tiny-GGUF", quants=["Q8_0"], out_dir=tmp_path, dry_run=True, api=hub, progress=False)
    assert hub.calls == []
    text = plan.describe()
    assert text.startswith("would upload to https://huggingface.co/me/Tiny-GGUF:")
    assert "Tiny-Q8_0.gguf" in text and "README.md" in text
    # F16 was only the source of the quantised file: it is not left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "Tiny-Q8_0.gguf", "verification.json"]


def test_no_token_is_refused_before_any_work(checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(publish_module, "_token_available", lambda: False)
    with pytest.raises(PublishError, match="no Hugging Face token: set HF_TOKEN or run `hf auth login`"):
        publish(checkpoint, "me/Tiny-GGUF", quants=["Q8_0"], out_dir=tmp_path)
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


def test_bad_arguments_are_named(checkpoint, tmp_path):
    with pytest.raises(PublishError, match="owner/name"):
        publish(checkpoint, "no-owner", dry_run=True)
    with pytest.raises(PublishError, match="unknown quantisation"):
        parse_quants("Q4_K_M,Q2_K")
    with pytest.raises(ConversionError, match="is not a model folder"):
        publish(tmp_path, "me/x", dry_run=True)
