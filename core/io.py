"""Where proofkd keeps things, how it writes them without leaving half a file, and how it reads a YAML file.

Every artefact is written under a temporary name beside its final place and
renamed into place only once complete, so an interrupted run never leaves a
truncated file or folder where a finished one is expected. A lock file
serialises writers (several ranks of one launch may ask for the same artefact
at once).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from filelock import FileLock


class YamlFileError(ValueError):
    """A YAML file that cannot be read as a mapping of keys; the message names the file, the place and the fix."""


def read_yaml_mapping(path: str | os.PathLike, what: str, needs: str) -> dict:
    """The mapping in the YAML file `path`, else a `YamlFileError` saying `{what} {path} is ...` and where.

    `needs` completes the message for an empty file or one that holds no mapping ("it needs at least ...").
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise YamlFileError(
            f"{what} {path} is not UTF-8: line {line} has the byte 0x{raw[error.start]:02x}; re-encode it as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise YamlFileError(
            f"{what} {path} is not valid YAML at {_yaml_problem(error)}. Fix it there "
            "(each key as `key: value`, list items as `- item`, indented with spaces, quotes closed)"
        ) from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a YAML {type(data).__name__}, not a mapping of keys"
        raise YamlFileError(f"{what} {path} is {kind}: {needs}")
    return data


def _yaml_problem(error: yaml.YAMLError) -> str:
    """'line L, column C: what the parser found', with where an unclosed bracket or quote was opened."""

    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = at(mark) if mark is not None else "an unknown place"
    context, opened = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and opened is not None and opened is not mark:
        context += f" (opened at {at(opened)})"
    problem = " ".join(str(p) for p in (context, getattr(error, "problem", None)) if p)
    return f"{where}: {problem or error}"


def cache_dir() -> Path:
    """`$PROOFKD_CACHE`, else `$XDG_CACHE_HOME/proofkd`, else `~/.cache/proofkd`."""
    explicit = os.environ.get("PROOFKD_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "proofkd"


def unwritable_reason(folder: str | os.PathLike, option: str = "--out") -> str | None:
    """Why nothing could be written in `folder` (which may not exist yet), with the fix; None if it can be.

    The nearest folder that exists decides: it must be writable, and nothing on the way may be a file.
    """
    folder = Path(folder)
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            if os.access(candidate, os.W_OK | os.X_OK):
                return None
            return (
                f"the folder {candidate} is not writable by this user. "
                f"Pass an {option} you can write to, or change its permissions"
            )
        if candidate.exists() or candidate.is_symlink():
            return (
                f"{candidate} is a file, not a folder, so nothing can be written under it. "
                f"Pass another {option}, or move that file away"
            )
    return None


def _temporary_sibling(final: Path) -> Path:
    return final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; move it into place on success.

    Works for a file or a folder written at the yielded path. On any error the
    temporary is removed and `final` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(final)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written at {tmp} for {final}")
        if final.is_dir() and not final.is_symlink():
            # A folder cannot be renamed over a folder: set the old one aside, and put it back if the
            # move fails, so that an interruption here leaves the old folder rather than none.
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


@contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """Hold an inter-process lock named after `path` (for build-once artefacts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(path.name + ".lock"))):
        yield
