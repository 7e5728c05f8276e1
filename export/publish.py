"""From a checkpoint to a published, verified GGUF repository, in one call.

    proofkd publish outputs/stage2 --repo me/Model-GGUF --quants Q4_K_M,Q5_K_M,Q8_0,F16 [--dry-run]

`export` converts the checkpoint to F16 (always: it is the source of the
quantised files), quantises, and verifies every requested file against the
checkpoint. `publish` then writes the model card and uploads the files that
passed with `huggingface_hub` (`create_repo(exist_ok=True)`, `upload_folder`).
A file that fails verification is never uploaded: publishing stops, unless
`skip_failed` asks to upload the others. `--dry-run` does everything but the
upload and prints what would be uploaded. The token comes from `HF_TOKEN` or
the stored login and is never printed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from proofkd.core.io import atomic_path, unwritable_reason
from proofkd.core.logs import get_logger

from .card import model_card
from .convert import convert, read_checkpoint
from .quantize import FILE_TYPES, quantize
from .verify import Reference, Verification, verification_table, verify

LOG = get_logger(__name__)

DEFAULT_QUANTS = ("Q4_K_M", "Q5_K_M", "Q8_0", "F16")


class PublishError(RuntimeError):
    """Publishing stopped; the message says why and what to do."""


@dataclass
class Export:
    folder: Path
    architecture: str
    results: list[Verification]
    notes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def passed(self) -> list[Verification]:
        return [r for r in self.results if r.passed]

    @property
    def failed(self) -> list[Verification]:
        return [r for r in self.results if not r.passed]


def parse_quants(text: str) -> list[str]:
    quants = [q.strip().upper() for q in text.split(",") if q.strip()]
    unknown = [q for q in quants if q not in FILE_TYPES]
    if unknown or not quants:
        raise PublishError(f"unknown quantisation {unknown or text!r}; choose from {', '.join(FILE_TYPES)}")
    return list(dict.fromkeys(quants))


def export(
    checkpoint: str | Path,
    out_dir: str | Path,
    quants: list[str],
    *,
    name: str | None = None,
    threads: int | None = None,
    pre_tokenizer: str | None = None,
    progress: bool = True,
) -> Export:
    """Convert, quantise and verify; files go to `out_dir` as `<name>-<TYPE>.gguf`."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    arch, _ = read_checkpoint(checkpoint)  # refused before --out is made
    reason = unwritable_reason(out_dir)
    if reason:
        raise PublishError(f"--out {out_dir}: {reason}")
    name = name or checkpoint.resolve().name
    out_dir.mkdir(parents=True, exist_ok=True)
    f16 = out_dir / f"{name}-F16.gguf"
    convert(checkpoint, f16, out_type="F16", pre_tokenizer=pre_tokenizer, progress=progress)
    LOG.info("computing the reference distribution of %s", checkpoint)
    reference = Reference.from_checkpoint(checkpoint)
    results, notes = [], {}
    for quant in quants:
        path = f16
        if quant != "F16":
            path, notes[quant] = quantize(
                f16, out_dir / f"{name}-{quant}.gguf", quant, threads=threads, progress=progress
            )
        LOG.info("verifying %s", path.name)
        results.append(verify(path, quant, reference, threads=threads))
    if "F16" not in quants:
        f16.unlink()
    report = {"checkpoint": str(checkpoint), "files": [r.to_json() for r in results], "quantizer_notes": notes}
    with atomic_path(out_dir / "verification.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return Export(folder=out_dir, architecture=arch.name, results=results, notes=notes)


@dataclass
class Plan:
    repo_id: str
    folder: Path
    files: list[str]
    dry_run: bool
    url: str | None = None

    def describe(self) -> str:
        lines = [f"{'would upload' if self.dry_run else 'uploaded'} to https://huggingface.co/{self.repo_id}:"]
        for name in self.files:
            size = (self.folder / name).stat().st_size
            lines.append(f"  {name:48s} {size / 2**20:10.1f} MiB")
        return "\n".join(lines)


def _token_available() -> bool:
    from huggingface_hub import get_token

    return bool(os.environ.get("HF_TOKEN") or get_token())


def publish(
    checkpoint: str | Path,
    repo_id: str,
    *,
    quants: tuple[str, ...] | list[str] = DEFAULT_QUANTS,
    out_dir: str | Path | None = None,
    dry_run: bool = False,
    skip_failed: bool = False,
    private: bool = False,
    base_model: str | None = None,
    license: str | None = None,
    threads: int | None = None,
    pre_tokenizer: str | None = None,
    api=None,
    progress: bool = True,
) -> Plan:
    """Export, verify, write the card, and upload (or, with `dry_run`, say what would be uploaded)."""
    if "/" not in repo_id:
        raise PublishError(f"--repo must be 'owner/name', not {repo_id!r}")
    if not dry_run and api is None and not _token_available():
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, or use --dry-run")
    folder = Path(out_dir) if out_dir else Path("outputs") / "gguf" / repo_id.split("/")[-1]
    name = repo_id.split("/")[-1].removesuffix("-GGUF").removesuffix("-gguf")
    done = export(
        checkpoint, folder, list(quants), name=name, threads=threads, pre_tokenizer=pre_tokenizer, progress=progress
    )
    print(verification_table(done.results))
    if done.failed and not skip_failed:
        failed = ", ".join(f"{r.file} ({'; '.join(r.problems)})" for r in done.failed)
        raise PublishError(f"not publishing: {failed} failed verification; fix it, or pass --skip-failed")
    if not done.passed:
        raise PublishError("not publishing: no file passed verification")
    card = model_card(
        repo_id=repo_id,
        results=done.passed,
        architecture=done.architecture,
        base_model=base_model,
        license=license,
        verification_tokens=done.passed[0].tokens,
        quantizer_notes=done.notes,
    )
    with atomic_path(folder / "README.md") as tmp:
        tmp.write_text(str(card), encoding="utf-8")
    files = [r.file for r in done.passed] + ["README.md"]
    plan = Plan(repo_id=repo_id, folder=folder, files=files, dry_run=dry_run)
    if dry_run:
        return plan
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(folder),
        allow_patterns=files,
        commit_message=f"Add {', '.join(r.quant for r in done.passed)} GGUF files, verified by proofkd",
    )
    plan.url = getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}"
    return plan
