"""Where proofkd keeps things, and how it writes them without leaving half a file.

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

from filelock import FileLock


def cache_dir() -> Path:
    """`$PROOFKD_CACHE`, else `$XDG_CACHE_HOME/proofkd`, else `~/.cache/proofkd`."""
    explicit = os.environ.get("PROOFKD_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "proofkd"


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
