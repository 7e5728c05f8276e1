"""Build a recipe's training data from its manifest, and say exactly what happened to every row.

    proofkd data build stage1_kd [--out data] [--source-root DIR] [--tokenizer NAME]

Loads each source with `datasets` (from the Hub, or from local copies under
`--source-root`, named `<root>/<id>.jsonl|.json|.parquet` or a folder
`<root>/<id>/`), checks its columns, merges, applies the manifest's filters in
order, shuffles with the manifest's seed and splits off the evaluation
fraction, and writes `<out>/<name>/train.jsonl`, `eval.jsonl`, the manifest it
used and a report (`report.md`, `report.json`). The folder is written under a
temporary name and moved into place only when complete.

What can be checked before the work is checked first: the destination
(`check_destination`), every local copy (`local_copies`), and the tokenizer a
`max_tokens` filter needs. A bad local file is reported with its path, line and
the fix (`proofkd.core.data.inputs`); docs/errors.md lists every case.

The report gives per-source row counts against the model card, the rows each
filter dropped, token-length statistics under the recipe's tokenizer, and an
analysis of every candidate filter on its own and in combination, marking the
combinations that reach the card's `expected_rows`: that is how a difference
such as Stage 1's 6,567 published rows against 6,122 trained rows is traced to
a filter.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import statistics
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from proofkd.core.data.inputs import column_problem, diagnose_json, precheck_json
from proofkd.core.data.manifest import FORMAT_COLUMNS, FilterSpec, Manifest, Source
from proofkd.core.io import atomic_path, unwritable_reason
from proofkd.core.logs import get_logger
from proofkd.core.templates import render_stage1, render_stage2
from proofkd.core.tokenize import stage2_instruction

LOG = get_logger(__name__)

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
OUTPUT_FILES = ("train.jsonl", "eval.jsonl", "manifest.yml", "report.md", "report.json")


class SourceError(ValueError):
    """A source that cannot be loaded, or lacks the columns its format needs."""


class OutputError(ValueError):
    """A destination the build cannot write to (a file in the way, no permission)."""


class FilterError(ValueError):
    """The filters leave nothing, or too little, to write."""


@dataclass
class SourceCount:
    id: str
    verified: bool
    card_count: int | None
    rows: int

    @property
    def difference(self) -> int | None:
        return None if self.card_count is None else self.rows - self.card_count


@dataclass
class BuildReport:
    name: str
    format: str
    sources: list[SourceCount]
    merged_rows: int
    dropped: list[tuple[str, int]]
    kept_rows: int
    train_rows: int
    eval_rows: int
    expected_rows: int | None
    candidates: dict[str, int] = field(default_factory=dict)
    combinations: list[tuple[list[str], int]] = field(default_factory=list)
    token_stats: dict | None = None
    token_note: str | None = None
    notes: list[str] = field(default_factory=list)
    output: str | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        data["sources"] = [dict(asdict(s), difference=s.difference) for s in self.sources]
        return data

    def to_markdown(self) -> str:
        lines = [f"# Data build: {self.name}", "", "## Sources", ""]
        lines += ["| source | verified | card | found | difference |", "|---|---|---:|---:|---:|"]
        for s in self.sources:
            card = "-" if s.card_count is None else f"{s.card_count:,}"
            diff = "-" if s.difference is None else f"{s.difference:+,}"
            lines.append(f"| {s.id} | {'yes' if s.verified else 'no'} | {card} | {s.rows:,} | {diff} |")
        card_total = sum(s.card_count or 0 for s in self.sources)
        lines.append(f"| **total** | | {card_total:,} | {self.merged_rows:,} | |")
        lines += ["", "## Filters (in order)", "", "| filter | rows dropped |", "|---|---:|"]
        lines += [f"| {label} | {n:,} |" for label, n in self.dropped] or ["| (none) | 0 |"]
        lines += ["", f"Kept {self.kept_rows:,} of {self.merged_rows:,} rows"]
        if self.expected_rows is not None:
            gap = self.kept_rows - self.expected_rows
            verdict = "matches" if gap == 0 else f"differs by {gap:+,}"
            lines[-1] += f"; the card trained on {self.expected_rows:,}: {verdict}."
        else:
            lines[-1] += "."
        lines += [f"Split: {self.train_rows:,} train / {self.eval_rows:,} eval.", ""]
        if self.candidates:
            lines += ["## Every candidate filter", "", "| filter alone | rows it drops |", "|---|---:|"]
            lines += [f"| {label} | {n:,} |" for label, n in self.candidates.items()]
            lines += ["", "| filters combined | rows kept | reaches expected |", "|---|---:|---|"]
            for labels, kept in self.combinations:
                hit = "**yes**" if self.expected_rows is not None and kept == self.expected_rows else ""
                lines.append(f"| {' + '.join(labels) or '(none)'} | {kept:,} | {hit} |")
            lines.append("")
        lines += ["## Tokens", ""]
        if self.token_stats:
            t = self.token_stats
            lines.append(
                f"Under {t['tokenizer']}: min {t['min']}, mean {t['mean']:.0f}, median {t['p50']}, "
                f"p90 {t['p90']}, p99 {t['p99']}, max {t['max']} tokens per row; "
                f"{t['over']:,} of {t['rows']:,} rows ({t['over_frac']:.1%}) exceed {t['limit']} "
                "and are cut there in training."
            )
        else:
            lines.append(f"Token statistics skipped: {self.token_note}")
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


# --- rows (in the builder's output schema: what train.jsonl holds) ----------------------


def _prompt_text(fmt: str, row: dict) -> str:
    if fmt == "stage1":
        return row["question"]
    if fmt == "stage2":
        return _instruction(row)
    return "\n".join(m.get("content", "") for m in row["prompt"] or [])


def _instruction(row: dict) -> str:
    return stage2_instruction(row["instruction"], row.get("input") or "")


def _text(fmt: str, row: dict) -> str:
    """The text a row trains on (for DAPO prompts: the prompt, since responses are sampled)."""
    if fmt == "stage1":
        return render_stage1(row["question"], row["CoT"], row["response"]).text
    if fmt == "stage2":
        return render_stage2(_instruction(row), row["output"]).text
    return _prompt_text(fmt, row)


def _ground_truth(source_row: dict) -> str:
    reward = source_row.get("reward_model") or {}
    return str(reward.get("ground_truth", "") if isinstance(reward, dict) else "")


def _is_empty(fmt: str, row: dict) -> bool:
    def blank(value) -> bool:
        return not isinstance(value, str) or not value.strip()

    if fmt == "stage1":
        return any(blank(row[c]) for c in ("question", "CoT", "response"))
    if fmt == "stage2":
        return blank(row["instruction"]) or blank(row["output"])
    return blank(_prompt_text(fmt, row)) or blank(row["answer"])


def _output_row(fmt: str, row: dict, source: str) -> dict:
    if fmt == "stage1":
        return {"question": row["question"], "CoT": row["CoT"], "response": row["response"], "source": source}
    if fmt == "stage2":
        return {
            "instruction": row["instruction"],
            "input": row.get("input") or "",
            "output": row["output"],
            "source": source,
        }
    return {"prompt": row["prompt"], "answer": _ground_truth(row), "source": source}


# --- loading ----------------------------------------------------------------------------


def _local_copy(root: Path, source: Source) -> Path | None:
    base = root / source.id
    for suffix in LOCAL_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return base if base.is_dir() else None


def local_copies(manifest: Manifest, source_root: Path) -> dict[str, Path]:
    """Every source's local copy under `source_root`, or one `SourceError` naming all that are missing."""
    if not source_root.is_dir():
        what = "is a file, not a folder" if source_root.exists() else "does not exist"
        raise SourceError(f"--source-root {source_root} {what}: pass the folder that holds the local copies")
    found, missing = {}, []
    for source in manifest.sources:
        local = _local_copy(source_root, source)
        if local is None:
            missing.append(source.id)
        else:
            found[source.id] = local
    if missing:
        looked = ", ".join(f"{source_root / m}{{{','.join(LOCAL_SUFFIXES)}}}" for m in missing)
        raise SourceError(
            f"{', '.join(missing)}: no local copy under {source_root} (looked for {looked} and a folder of the "
            f"same name). Copy the file there under that name, or remove the source from the manifest"
        )
    return found


@contextmanager
def _quiet_datasets():
    """Hold back `datasets`' own error log while it loads a local file: the failure is reported once, by us."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _local_problem(local: Path, columns: tuple[str, ...]) -> str | None:
    return diagnose_json(local, columns) if local.is_file() and local.suffix in (".json", ".jsonl") else None


def load_source(
    source: Source, columns: tuple[str, ...], source_root: Path | None = None, *, local: Path | None = None
):
    """The source as a `datasets.Dataset`, or a `SourceError` that names it, what is wrong and what to do."""
    from datasets import load_dataset

    if source_root is not None and local is None:
        local = _local_copy(source_root, source)
        if local is None:
            raise SourceError(
                f"{source.id}: no local copy under {source_root} "
                f"(looked for {source.id}{{{','.join(LOCAL_SUFFIXES)}}} and a folder {source.id}/)"
            )
    where = f"{source.id}: the local {'folder' if local is not None and local.is_dir() else 'file'} {local}"
    try:
        if local is None:
            dataset = load_dataset(source.id, source.config, split=source.split)
        elif local.is_dir():
            with _quiet_datasets():
                dataset = load_dataset(str(local), split=source.split)
        else:
            kind = "parquet" if local.suffix == ".parquet" else "json"
            problem = precheck_json(local, columns) if kind == "json" else None
            if problem:
                raise SourceError(f"{where} {problem}")
            with _quiet_datasets():
                dataset = load_dataset(kind, data_files=str(local), split="train")
    except SourceError:
        raise
    except Exception as error:  # datasets raises many kinds for a missing, unreachable or malformed source
        if local is None:
            raise SourceError(
                f"{source.id}: could not be loaded ({type(error).__name__}: {error}). Check the id and split "
                f"({source.split!r}) on the Hub, or pass --source-root with a local copy named {source.id}.jsonl"
            ) from error
        problem = _local_problem(local, columns)
        if problem is None:
            kind = "Parquet" if local.suffix == ".parquet" else "a dataset" if local.is_dir() else "JSON Lines"
            problem = (
                f"could not be read as {kind} ({type(error).__name__}: {_cause(error)}). "
                "Check that it is complete and in that format, or copy it again"
            )
        raise SourceError(f"{where} {problem}") from error
    label = source.id if local is None else where
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        if len(dataset) == 0 and not dataset.column_names:
            raise SourceError(f"{label} is empty (no rows). Give it rows with the columns {list(columns)}")
        raise SourceError(
            f"{label}: expected the columns {list(columns)}, but it has {dataset.column_names} (missing {missing}). "
            "Rename the columns in the data, or use a manifest whose format matches them "
            f"(format: stage1 needs {list(FORMAT_COLUMNS['stage1'])}, stage2 {list(FORMAT_COLUMNS['stage2'])}, "
            f"dapo {list(FORMAT_COLUMNS['dapo'])})"
        )
    for column in columns:
        problem = column_problem(column, dataset.features[column])
        if problem:
            precise = _local_problem(local, columns) if local is not None else None
            raise SourceError(f"{label} {precise}" if precise else f"{label}: {problem}")
    if len(dataset) == 0:
        raise SourceError(f"{label} is empty (no rows). Give it rows with the columns {list(columns)}")
    return dataset


def _cause(error: BaseException) -> str:
    """The innermost message of a chained error (datasets wraps the useful one)."""
    while error.__cause__ is not None or (error.__context__ is not None and not error.__suppress_context__):
        error = error.__cause__ or error.__context__
    return str(error) or type(error).__name__


# --- filters ----------------------------------------------------------------------------


def _duplicates(keys: list[str]) -> list[bool]:
    seen: set[str] = set()
    out = []
    for key in keys:
        out.append(key in seen)
        seen.add(key)
    return out


def _drop_mask(spec: FilterSpec, fmt: str, rows: list[dict], lengths: list[int] | None) -> list[bool]:
    if spec.name == "empty_fields":
        return [_is_empty(fmt, r) for r in rows]
    if spec.name == "exact_duplicates":
        return _duplicates([_text(fmt, r) for r in rows])
    if spec.name == "duplicate_prompts":
        return _duplicates([_prompt_text(fmt, r) for r in rows])
    if lengths is None:
        raise ValueError("the max_tokens filter needs a tokenizer: pass --tokenizer (a name or a local path)")
    return [n > spec.value for n in lengths]


def _token_lengths(tokenizer, fmt: str, rows: list[dict], progress: bool) -> list[int]:
    from tqdm.auto import tqdm

    texts = [_text(fmt, r) for r in rows]
    unique = sorted(set(texts))
    lengths: dict[str, int] = {}
    batch = 256
    extra = 0 if fmt == "dapo" else 1  # training appends end-of-sequence
    for start in tqdm(range(0, len(unique), batch), desc="counting tokens", disable=not progress, leave=False):
        chunk = unique[start : start + batch]
        for text, ids in zip(chunk, tokenizer(chunk, add_special_tokens=True)["input_ids"], strict=True):
            lengths[text] = len(ids) + extra
    return [lengths[t] for t in texts]


def _token_stats(lengths: list[int], limit: int, name: str) -> dict:
    ordered = sorted(lengths)

    def pct(q: float) -> int:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    over = sum(n > limit for n in lengths)
    return {
        "tokenizer": name,
        "rows": len(lengths),
        "min": ordered[0],
        "mean": statistics.fmean(lengths),
        "p50": pct(0.5),
        "p90": pct(0.9),
        "p99": pct(0.99),
        "max": ordered[-1],
        "limit": limit,
        "over": over,
        "over_frac": over / len(lengths),
    }


def _candidates(manifest: Manifest, with_tokens: bool) -> list[FilterSpec]:
    chosen = list(manifest.filters)
    names = {f.name for f in chosen}
    for name in ("empty_fields", "exact_duplicates", "duplicate_prompts"):
        if name not in names:
            chosen.append(FilterSpec(name=name))
    if with_tokens and "max_tokens" not in names:
        chosen.append(FilterSpec(name="max_tokens", value=manifest.sequence_len))
    return chosen


# --- the build --------------------------------------------------------------------------


def _load_tokenizer(name: str | None):
    if not name:
        return None, "the manifest names no tokenizer and none was given"
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name), None
    except Exception as error:
        return None, f"tokenizer {name!r} could not be loaded ({type(error).__name__}); pass --tokenizer"


def check_destination(out_root: str | Path, name: str) -> Path:
    """`<out_root>/<name>`, once it is certain the build can be moved there; else an `OutputError` saying why.

    Checked before any source is loaded, so a wrong `--out` costs nothing.
    """
    final = Path(out_root) / name
    if final.exists() and not final.is_dir():
        raise OutputError(
            f"--out {out_root}: {final} is a file, not a folder, and the build would replace it. "
            "Move or delete it, or pass another --out"
        )
    reason = unwritable_reason(final.parent)
    if reason:
        raise OutputError(f"--out {out_root}: {reason}")
    return final


def _all_dropped(manifest: Manifest, merged: int, dropped: list[tuple[str, int]]) -> FilterError:
    by = ", ".join(f"{label} dropped {n:,}" for label, n in dropped)
    worst = max(dropped, key=lambda d: d[1])[0] if dropped else None
    fix = f"Remove or loosen the filter {worst!r} in the manifest's filters"
    if worst and worst.startswith("max_tokens"):
        fix += f" (raise the limit: every row is longer than {worst.split()[1]} tokens)"
    return FilterError(
        f"{manifest.name}: the filters dropped every row of {merged:,}: {by}; nothing was written. {fix}"
    )


def build(
    manifest: Manifest,
    out_root: str | Path = "data",
    *,
    source_root: str | Path | None = None,
    tokenizer: str | None = None,
    count_tokens: bool = True,
    progress: bool = True,
) -> BuildReport:
    """Build `manifest` into `<out_root>/<name>/` and return the report (also written there).

    `tokenizer` overrides the manifest's; `count_tokens=False` skips token counting
    (and the max_tokens candidate) altogether. Everything that can be checked
    before the work (the destination, the local copies, the tokenizer a
    max_tokens filter needs) is checked first; nothing is written unless the
    whole build succeeds.
    """
    from datasets import Dataset
    from tqdm.auto import tqdm

    if not manifest.sources:
        raise SourceError(f"{manifest.name}: the manifest lists no sources, so there is nothing to build")
    final = check_destination(out_root, manifest.name)
    root = Path(source_root) if source_root is not None else None
    locals_ = local_copies(manifest, root) if root is not None else {}
    needs_tokens = any(f.name == "max_tokens" for f in manifest.filters)
    if not count_tokens:
        tok, token_note = None, "not asked for"
    else:
        tok, token_note = _load_tokenizer(tokenizer or manifest.tokenizer)
        if tok is None and tokenizer:
            raise ValueError(
                f"tokenizer {tokenizer!r} could not be loaded: pass --tokenizer a Hub id or a local folder "
                "with the tokenizer's files, or --no-tokens"
            )
    if tok is None and needs_tokens:
        reason = "token counting was turned off (--no-tokens)" if not count_tokens else token_note
        raise ValueError(
            f"{manifest.name}: the max_tokens filter needs a tokenizer: pass --tokenizer (a name or a local path), "
            f"or remove the filter from the manifest; here {reason}"
        )

    rows: list[dict] = []
    counts: list[SourceCount] = []
    for source in tqdm(manifest.sources, desc="loading sources", disable=not progress, leave=False):
        dataset = load_source(source, manifest.columns, root, local=locals_.get(source.id))
        counts.append(SourceCount(source.id, source.verified, source.card_count, len(dataset)))
        rows.extend(_output_row(manifest.format, r, source.id) for r in dataset.select_columns(list(manifest.columns)))
        LOG.debug("%s: %d rows", source.id, len(dataset))
    lengths = _token_lengths(tok, manifest.format, rows, progress) if tok is not None else None

    masks = {
        c.label: np.asarray(_drop_mask(c, manifest.format, rows, lengths), dtype=bool)
        for c in _candidates(manifest, lengths is not None)
    }
    keep = np.ones(len(rows), dtype=bool)
    dropped = []
    for spec in manifest.filters:
        dropped.append((spec.label, int((keep & masks[spec.label]).sum())))
        keep &= ~masks[spec.label]

    combinations = []
    labels = list(masks)
    for size in range(len(labels) + 1):
        for subset in itertools.combinations(labels, size):
            dropped_any = np.zeros(len(rows), dtype=bool)
            for label in subset:
                dropped_any |= masks[label]
            combinations.append((list(subset), int((~dropped_any).sum())))

    kept_rows = [r for r, k in zip(rows, keep, strict=True) if k]
    if not kept_rows:
        raise _all_dropped(manifest, len(rows), dropped)
    n_eval = math.ceil(manifest.eval_fraction * len(kept_rows))
    if manifest.eval_fraction > 0 and n_eval >= len(kept_rows):
        raise FilterError(
            f"{manifest.name}: only {len(kept_rows)} row(s) kept, and eval_fraction {manifest.eval_fraction} "
            "would hold out all of them, leaving nothing to train on. Add rows, or lower eval_fraction "
            "(0 holds out nothing)"
        )
    dataset = Dataset.from_list(kept_rows)
    if manifest.eval_fraction > 0:
        split = dataset.train_test_split(test_size=manifest.eval_fraction, seed=manifest.shuffle_seed)
        train, evaluation = split["train"], split["test"]
    else:
        train, evaluation = dataset.shuffle(seed=manifest.shuffle_seed), dataset.select([])

    kept_lengths = [n for n, k in zip(lengths, keep, strict=True) if k] if lengths is not None else None
    report = BuildReport(
        name=manifest.name,
        format=manifest.format,
        sources=counts,
        merged_rows=len(rows),
        dropped=dropped,
        kept_rows=len(kept_rows),
        train_rows=len(train),
        eval_rows=len(evaluation),
        expected_rows=manifest.expected_rows,
        candidates={label: int(mask.sum()) for label, mask in masks.items()},
        combinations=sorted(combinations, key=lambda c: (-c[1], len(c[0]))),
        token_stats=_token_stats(kept_lengths, manifest.sequence_len, tok.name_or_path) if kept_lengths else None,
        token_note=token_note,
        notes=list(manifest.notes),
    )
    with atomic_path(final) as tmp:
        tmp.mkdir(parents=True)
        _write_jsonl(tmp / "train.jsonl", train)
        _write_jsonl(tmp / "eval.jsonl", evaluation)
        (tmp / "manifest.yml").write_text(
            yaml.safe_dump(manifest.model_dump(mode="json"), sort_keys=False, allow_unicode=True), encoding="utf-8"
        )
        (tmp / "report.md").write_text(report.to_markdown(), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    report.output = str(final)
    return report


def _write_jsonl(path: Path, dataset) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in dataset:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
