"""Quantising an F16 GGUF with llama.cpp (Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_K_S, Q3_K_M, IQ4_XS), optionally
weighed by an importance matrix (`proofkd.export.imatrix`), through llama-cpp-python.

The `gguf` package cannot produce K-quants, so this calls llama.cpp's own
`llama_model_quantize`. It runs in a child process: the C call cannot be
cancelled, and Python's Ctrl-C, raised inside llama.cpp's log callback, would
be swallowed there while the quantiser ran on. The parent reads the child's
progress, kills it on Ctrl-C or any error, and removes the partial file.

llama.cpp offers no progress callback; it logs one line per tensor
(`[ 12/ 272] name ...`), so progress is read from its log. K-quants need row
lengths divisible by 256: in narrower models llama.cpp falls back to other
types for some tensors (it says how many in its log, which is kept), so
measure a file rather than assume its quality from its name.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tqdm.auto import tqdm

from proofkd.core.io import atomic_path

# llama.cpp's file types (llama_ftype), by the names proofkd publishes.
FILE_TYPES = {"F16": 1, "Q8_0": 7, "Q3_K_M": 12, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "IQ4_XS": 30}
# ggml's error log level; with the fallback summary, the only lines worth keeping.
_ERROR = 4
_PROGRESS = re.compile(rb"\[\s*(\d+)/\s*(\d+)\]")


class QuantizationError(RuntimeError):
    """llama.cpp refused or failed to quantise a file."""


def quantize(
    source: str | Path,
    out_path: str | Path,
    quant: str,
    *,
    imatrix: str | Path | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> tuple[Path, list[str]]:
    """Quantise the F16/BF16/F32 GGUF `source` to `quant`, weighing errors by the GGUF `imatrix` file if given;
    return the path and llama.cpp's warnings."""
    if quant not in FILE_TYPES or quant == "F16":
        choices = ", ".join(q for q in FILE_TYPES if q != "F16")
        raise QuantizationError(f"quant must be one of {choices}, not {quant!r}")
    final = Path(out_path)
    bar = tqdm(desc=f"quantising to {quant}", unit="tensor", disable=not progress, leave=False, mininterval=1)
    notes: list[str] = []
    try:
        with atomic_path(final) as tmp:
            arguments = [str(source), str(tmp), quant, str(int(threads or os.cpu_count() or 1)), str(imatrix or "")]
            code = _run_child(arguments, bar, notes)
            if code != 0 or not tmp.is_file():
                raise QuantizationError(f"llama.cpp could not quantise {source} to {quant}: {' | '.join(notes)}")
    finally:
        bar.close()
    return final, notes


def _child_command(arguments: list[str]) -> list[str]:
    return [sys.executable, "-m", "proofkd.export.quantize", *arguments]


def _run_child(arguments: list[str], bar: tqdm, notes: list[str]) -> int:
    """Run the quantiser in a child process, following its progress; kill it if this process is interrupted."""
    child = subprocess.Popen(_child_command(arguments), stdout=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:
            message = json.loads(line)
            if "note" in message:
                notes.append(message["note"])
            else:
                bar.total = message["total"]
                bar.update(message["done"] - bar.n)
        return child.wait()
    except BaseException:
        child.kill()
        child.wait()
        raise


def _quantize_here(source: str, out: str, quant: str, threads: int, imatrix: str) -> int:
    """The child's work: call llama.cpp, printing progress and notes as JSON lines."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = FILE_TYPES[quant]
    entries, buffers = _imatrix_entries(imatrix) if imatrix else (None, [])
    if entries is not None:
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))

    def say(message: dict) -> None:
        print(json.dumps(message), flush=True)

    @llama_cpp.llama_log_callback
    def on_log(level, text, user_data):
        match = _PROGRESS.search(text or b"")
        if match:
            say({"done": int(match.group(1)), "total": int(match.group(2))})
        elif b"required fallback quantization" in (text or b"") or level == _ERROR:
            say({"note": text.decode("utf-8", "replace").strip()})

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    code = llama_cpp.llama_model_quantize(source.encode(), out.encode(), ctypes.byref(params))
    del entries, buffers  # read by the quantiser until here
    return code


def _imatrix_entries(path: str):
    """The imatrix as the null-terminated array of `llama_model_imatrix_data` the quantiser reads, and the
    buffers its pointers point into (to be kept alive while it reads them)."""
    import llama_cpp
    import numpy as np

    from .imatrix import read_imatrix_values

    values = read_imatrix_values(path)
    entries = (llama_cpp.llama_model_imatrix_data * (len(values) + 1))()
    buffers = []
    for entry, (name, column_values) in zip(entries, values.items(), strict=False):
        buffer = np.ascontiguousarray(column_values, dtype=np.float32)
        buffers.append(buffer)
        entry.name = name.encode()
        entry.data = buffer.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entry.size = buffer.size
    return entries, buffers


def _die_with_parent() -> None:
    """Ask Linux to kill this child when its parent dies, so a killed export leaves no quantiser running."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


if __name__ == "__main__":
    # Ctrl-C ends the child at once; the parent sees it and cleans up.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _die_with_parent()
    source_path, out_file, file_type, thread_count, imatrix_file = sys.argv[1:6]
    sys.exit(1 if _quantize_here(source_path, out_file, file_type, int(thread_count), imatrix_file) else 0)
