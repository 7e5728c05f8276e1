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
from .imatrix import DEFAULT_DATASET, calibration_text, compute_imatrix, write_imatrix
from .quantize import FILE_TYPES, quantize
from .verify import Reference, Verification, read_text_file, verification_table, verify

LOG = get_logger(__name__)

DEFAULT_QUANTS = ("Q4_K_M", "Q5_K_M", "Q8_0", "F16")
# Types quantised with an importance matrix by default (Q8_0 and F16 do not use one).
IMATRIX_TYPES = ("Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_XS")


class PublishError(RuntimeError):
    """Publishing stopped; the message says why and what to do."""


@dataclass
class Export:
    folder: Path
    architecture: str
    results: list[Verification]
    notes: dict[str, list[str]] = field(default_factory=dict)
    imatrix: Path | None = None
    calibration: str | None = None
    imatrix_choices: dict[str, dict] = field(default_factory=dict)

    @property
    def imatrix_types(self) -> list[str]:
        """The types whose file was quantised with the importance matrix."""
        return [quant for quant, choice in self.imatrix_choices.items() if choice["used"]]

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
    text: str | None = None,
    imatrix: bool = True,
    calibration: str | Path | None = None,
    threads: int | None = None,
    pre_tokenizer: str | None = None,
    progress: bool = True,
) -> Export:
    """Convert, quantise and verify; files go to `out_dir` as `<name>-<TYPE>.gguf`.

    With `imatrix`, the types in `IMATRIX_TYPES` are quantised with an importance matrix computed on
    the UTF-8 file `calibration` (default: training-split Stage-1 problems), saved as `<name>.imatrix.gguf`,
    where the file it gives is closer to the HF model on that text than the one without.

    `verification.json` is rewritten after each file, and lists every `<name>-*.gguf` in `out_dir`: this run's,
    and an earlier run's that are still there unchanged (any other is listed as unverified).
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    arch, _ = read_checkpoint(checkpoint)  # refused before --out is made
    calibration_given = read_text_file(calibration, "--calibration") if calibration else None
    reason = unwritable_reason(out_dir)
    if reason:
        raise PublishError(f"--out {out_dir}: {reason}")
    name = name or checkpoint.resolve().name
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_files(out_dir, name)
    f16 = out_dir / f"{name}-F16.gguf"
    convert(checkpoint, f16, out_type="F16", pre_tokenizer=pre_tokenizer, progress=progress)
    LOG.info("computing the reference distributions of %s", checkpoint)
    reference = Reference.from_checkpoint(checkpoint, text=text)
    done = Export(folder=out_dir, architecture=arch.name, results=[])
    if imatrix and set(quants) & set(IMATRIX_TYPES):
        calibration_reference = _prepare_imatrix(done, checkpoint, name, calibration, calibration_given)
    for quant in quants:
        path = f16
        final = out_dir / f"{name}-{quant}.gguf"
        if quant in IMATRIX_TYPES and done.imatrix:
            path, done.notes[quant] = _quantize_choosing_imatrix(
                done, f16, final, quant, calibration_reference, threads=threads, progress=progress
            )
        elif quant != "F16":
            path, done.notes[quant] = quantize(f16, final, quant, threads=threads, progress=progress)
        LOG.info("verifying %s in llama.cpp", path.name)
        done.results.append(verify(path, reference, quant=quant, threads=threads))
        write_verification_report(done, checkpoint, name)
    if "F16" not in quants:
        f16.unlink()
        write_verification_report(done, checkpoint, name)
    return done


def _prepare_imatrix(done: Export, checkpoint: Path, name: str, calibration, text: str | None) -> Reference:
    """Compute and save the importance matrix; return the HF model's view of the calibration text."""
    LOG.info("computing the importance matrix of %s", checkpoint)
    dataset = Path(calibration).name if calibration else DEFAULT_DATASET
    text = text if text is not None else calibration_text()
    matrix = compute_imatrix(checkpoint, text=text, dataset=dataset)
    done.imatrix = write_imatrix(matrix, done.folder / f"{name}.imatrix.gguf")
    done.calibration = f"{dataset} ({matrix.chunk_count} windows of {matrix.chunk_size} tokens)"
    return Reference.from_checkpoint(checkpoint, text=text, windows=2, greedy_tokens=0)


def _quantize_choosing_imatrix(
    done: Export, f16: Path, final: Path, quant: str, calibration: Reference, *, threads, progress
) -> tuple[Path, list[str]]:
    """Quantise `quant` without and with the importance matrix and keep the file whose mean KLD on the
    calibration text is lower: it helps most types and models, but made some files worse (docs/results.md).
    The held-out text that verification reports on plays no part in the choice."""
    made = {}
    for label, matrix in (("without", None), ("with", done.imatrix)):
        path, notes = quantize(
            f16,
            final.with_name(f".{final.name}.partial-{label}"),
            quant,
            imatrix=matrix,
            threads=threads,
            progress=progress,
        )
        made[label] = (path, notes, verify(path, calibration, quant=quant, threads=threads).statistics.kld_mean)
    used = made["with"][2] < made["without"][2]
    keep, drop = ("with", "without") if used else ("without", "with")
    made[drop][0].unlink()
    os.replace(made[keep][0], final)
    done.imatrix_choices[quant] = {
        "used": used,
        "calibration_kld_without": made["without"][2],
        "calibration_kld_with": made["with"][2],
    }
    LOG.info(
        "%s: mean KLD on the calibration text %.4g without the importance matrix, %.4g with it: %s",
        quant,
        made["without"][2],
        made["with"][2],
        "using it" if used else "not using it",
    )
    return final, made[keep][1]


def remove_partial_files(out_dir: Path, name: str) -> None:
    """The temporaries a killed export left in `out_dir` (a finished run leaves none)."""
    temporaries = (
        f".{name}-*.gguf.partial-*",
        f"..{name}-*.gguf.partial-*",  # the temporary of a file quantised for the imatrix choice
        f".{name}.imatrix.gguf.partial-*",
        ".*.json.partial-*",
        ".*.md.partial-*",
    )
    for pattern in temporaries:
        for stale in out_dir.glob(pattern):
            LOG.info("removing %s, left by an interrupted export", stale.name)
            stale.unlink()


def write_verification_report(done: Export, checkpoint: Path, name: str) -> Path:
    """`verification.json` for the files now in the folder (see `export`)."""
    path = done.folder / "verification.json"
    present = {p.name: p.stat().st_size for p in done.folder.glob(f"{name}-*.gguf")}
    entries = {r.file: r.to_json() for r in done.results if r.file in present}
    for entry in _earlier_entries(path):
        file = entry.get("file")
        if file in present and file not in entries and entry.get("size_bytes") == present[file]:
            entries[file] = entry
    report = {
        "checkpoint": str(checkpoint),
        "files": list(entries.values()),
        "unverified": sorted(set(present) - set(entries)),
        "imatrix": {
            "file": done.imatrix.name,
            "calibration": done.calibration,
            "types": done.imatrix_types,
            "choices": done.imatrix_choices,
        }
        if done.imatrix
        else None,
        "quantizer_notes": done.notes,
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def _earlier_entries(path: Path) -> list[dict]:
    try:
        files = json.loads(path.read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [entry for entry in files if isinstance(entry, dict)] if isinstance(files, list) else []


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


def check_repo_id(repo_id: str, option: str) -> None:
    """A `PublishError` naming `option` unless `repo_id` is `owner/name` by the Hub's naming rules."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    rules = "letters, digits, '-', '_' and '.', at most 96 characters, no '--' or '..', not starting or ending in '-' or '.'"
    if repo_id.count("/") != 1:
        raise PublishError(f"{option} must be 'owner/name', not {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PublishError(f"{option} {repo_id!r} is not a valid Hub repository id: use {rules}") from None


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
    text: str | None = None,
    imatrix: bool = True,
    calibration: str | Path | None = None,
    threads: int | None = None,
    pre_tokenizer: str | None = None,
    api=None,
    progress: bool = True,
) -> Plan:
    """Export, verify, write the card, and upload (or, with `dry_run`, say what would be uploaded).

    Every argument is checked before any work, in a dry run too.
    """
    check_repo_id(repo_id, "--repo")
    if not base_model:
        raise PublishError(
            "--base-model is missing: name the Hub repository of the model these files quantise (owner/name); "
            "the card gives it as base_model, with base_model_relation: quantized"
        )
    check_repo_id(base_model, "--base-model")
    if not dry_run and api is None and not _token_available():
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, or use --dry-run")
    folder = Path(out_dir) if out_dir else Path("outputs") / "gguf" / repo_id.split("/")[-1]
    name = repo_id.split("/")[-1].removesuffix("-GGUF").removesuffix("-gguf")
    done = export(
        checkpoint,
        folder,
        list(quants),
        name=name,
        text=text,
        imatrix=imatrix,
        calibration=calibration,
        threads=threads,
        pre_tokenizer=pre_tokenizer,
        progress=progress,
    )
    print(verification_table(done.results))
    if done.failed and not skip_failed:
        failed = ", ".join(f"{r.file} ({'; '.join(r.problems)})" for r in done.failed)
        raise PublishError(f"not publishing: {failed} failed verification; fix it, or pass --skip-failed")
    if not done.passed:
        raise PublishError("not publishing: no file passed verification")
    weighted = [r.quant for r in done.passed if r.quant in done.imatrix_types]
    card = model_card(
        repo_id=repo_id,
        results=done.passed,
        architecture=done.architecture,
        base_model=base_model,
        license=license,
        verification_tokens=done.passed[0].statistics.tokens,
        quantizer_notes=done.notes,
        imatrix=(done.imatrix.name, done.calibration, weighted) if weighted else None,
    )
    with atomic_path(folder / "README.md") as tmp:
        tmp.write_text(str(card), encoding="utf-8")
    files = [r.file for r in done.passed] + ([done.imatrix.name] if weighted else []) + ["README.md"]
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
