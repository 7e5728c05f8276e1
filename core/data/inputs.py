"""What is wrong with a source's rows, said as a person fixing the file needs it: the file, the line, the fix.

The builder hands local files to `datasets`, which is fast on good files and
terse on bad ones (`'utf-8' codec can't decode byte 0xff`, `StopIteration`,
`An error occurred while generating the dataset`). When a load fails, or a
loaded column holds the wrong kind of value, `diagnose_json` reads the file
again, line by line, and names the first line that is wrong and why. It runs
only after a failure, so a good file is read once.

`column_problem` checks a loaded column's type against what the row format
needs (text for `question`, `CoT`, `response`, `instruction`, `input`,
`output`; a list of `{role, content}` messages for `prompt`; an object with
`ground_truth` for `reward_model`).
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

# What each column must hold, in words, for the messages.
MESSAGES = "a list of messages [{role, content}]"
OBJECT = "an object {ground_truth: ...}"
EXPECTED = {"prompt": MESSAGES, "reward_model": OBJECT}


def expected(column: str) -> str:
    return EXPECTED.get(column, "text (a JSON string)")


def _kind(value) -> str:
    """A JSON value's kind in words."""
    if isinstance(value, bool):
        return f"true/false ({json.dumps(value)})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"text ({_short(json.dumps(value, ensure_ascii=False))})"
    if isinstance(value, list):
        return f"a list ({_short(json.dumps(value, ensure_ascii=False))})"
    if isinstance(value, dict):
        return f"an object ({_short(json.dumps(value, ensure_ascii=False))})"
    return type(value).__name__


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def value_problem(column: str, value) -> str | None:
    """Why one row's `value` cannot be the `column` of a row, or None if it can (None/null always can)."""
    if value is None:
        return None
    if column == "prompt":
        if isinstance(value, list) and all(
            isinstance(m, dict) and isinstance(m.get("content", ""), str | type(None)) for m in value
        ):
            return None
    elif column == "reward_model":
        if isinstance(value, dict):
            return None
    elif isinstance(value, str):
        return None
    return f"column {column!r} holds {_kind(value)}, but it must be {expected(column)}"


def _is_text(feature) -> bool:
    from datasets import Value

    return isinstance(feature, Value) and feature.dtype in ("string", "large_string", "null")


def _describe(feature) -> str:
    from datasets import LargeList, List, Value

    if isinstance(feature, Value):
        if feature.dtype.startswith(("int", "uint", "float", "double", "decimal")):
            return f"numbers ({feature.dtype})"
        return "true/false values" if feature.dtype == "bool" else f"{feature.dtype} values"
    if isinstance(feature, List | LargeList):
        return "lists"
    if isinstance(feature, dict):
        return "objects"
    if type(feature).__name__ == "Json":
        return "values of mixed kinds (text in some rows, numbers, lists or objects in others)"
    return type(feature).__name__


def column_problem(column: str, feature) -> str | None:
    """Why a loaded column (a `datasets` feature) cannot be `column`, or None if it can."""
    from datasets import LargeList, List, Value

    if isinstance(feature, Value) and feature.dtype == "null":
        return None  # every value null: the empty_fields filter is for that
    if column == "prompt":
        messages = isinstance(feature, List | LargeList) and isinstance(feature.feature, dict)
        if messages and ("content" not in feature.feature or _is_text(feature.feature["content"])):
            return None
    elif column == "reward_model":
        if isinstance(feature, dict):
            return None
    elif _is_text(feature):
        return None
    return f"column {column!r} holds {_describe(feature)}, but it must be {expected(column)}"


REENCODE = "re-encode it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 OLD > NEW`, or save as UTF-8 in your editor)"


def precheck_json(path: Path, columns: tuple[str, ...]) -> str | None:
    """The cheap checks that `datasets` does not do reliably, run before every local JSON load: empty, not UTF-8.

    (pyarrow's reader can accept bytes that are not UTF-8 and fail only when a row is read.)
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    blank = True
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                blank = blank and not chunk.strip()
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return _utf8_problem(path)
    return diagnose_json(path, columns) if blank else None


def _utf8_problem(path: Path) -> str | None:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return (
                    f"is not UTF-8: line {number}, column {error.start + 1} has the byte 0x{raw[error.start]:02x}; "
                    + REENCODE
                )
    return None


def diagnose_json(path: Path, columns: tuple[str, ...]) -> str | None:
    """The first thing wrong in a local JSON or JSON Lines file, with its line, or None if nothing is found."""
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip()
    if not head:
        return (
            f"is empty (no rows). Write one JSON object per line with the columns {list(columns)}, "
            "or remove the source from the manifest"
        )
    if head.startswith(b"["):
        return _diagnose_document(path, columns)
    return _diagnose_lines(path, columns)


def _diagnose_lines(path: Path, columns: tuple[str, ...]) -> str | None:
    rows = 0
    last = _count_lines(path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                return _utf8_problem(path)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                where = f"line {number}, column {error.colno}"
                if number == last and not raw.endswith(b"\n"):
                    return (
                        f"ends in a line cut short: {where} is not valid JSON ({error.msg}). The file looks "
                        f"truncated: copy it again, or delete line {number}"
                    )
                return f"has invalid JSON at {where} ({error.msg}). Fix that line: each line must be one JSON object"
            problem = _row_problem(row, columns)
            if problem:
                return f"has a wrong row at line {number}: {problem}"
            rows += 1
    if rows == 0:
        return (
            f"has no rows (only blank lines). Write one JSON object per line with the columns {list(columns)}, "
            "or remove the source from the manifest"
        )
    return None


def _diagnose_document(path: Path, columns: tuple[str, ...]) -> str | None:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        return f"is not UTF-8: line {line}, column {column} has the byte 0x{data[error.start]:02x}; " + REENCODE
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        return (
            f"has invalid JSON at line {error.lineno}, column {error.colno} ({error.msg}). "
            "Fix it there (is the file cut short?)"
        )
    if not rows:
        return f"is empty (an empty list). Give it rows with the columns {list(columns)}"
    for index, row in enumerate(rows):
        problem = _row_problem(row, columns)
        if problem:
            return f"has a wrong row at index {index} of its list: {problem}"
    return None


def _row_problem(row, columns: tuple[str, ...]) -> str | None:
    if not isinstance(row, dict):
        return (
            f"holds {_kind(row)}, not a row: each row must be a JSON object with the columns {list(columns)}, "
            'e.g. {"' + columns[0] + '": ...}'
        )
    for column in columns:
        problem = value_problem(column, row.get(column))
        if problem:
            return problem
    return None


def _count_lines(path: Path) -> int:
    count, tail = 0, b""
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            count += chunk.count(b"\n")
            tail = chunk[-1:]
    return count + (1 if tail and tail != b"\n" else 0)
