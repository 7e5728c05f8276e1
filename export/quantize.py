"""Quantising an F16 GGUF to Q8_0, Q5_K_M or Q4_K_M with llama.cpp, through llama-cpp-python.

The `gguf` package cannot produce K-quants, so this calls llama.cpp's own
`llama_model_quantize`. It offers no progress callback; llama.cpp logs one
line per tensor (`[ 12/ 272] name ...`), so progress is read from its log.
K-quants need row lengths divisible by 256: in narrower models llama.cpp falls
back to other types for some tensors (it says how many in its log, which is
kept), so measure a file rather than assume its quality from its name.
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

from tqdm.auto import tqdm

from proofkd.core.io import atomic_path

# llama.cpp's file types (llama_ftype), by the names proofkd publishes.
FILE_TYPES = {"F16": 1, "Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17}
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
    threads: int | None = None,
    progress: bool = True,
) -> tuple[Path, list[str]]:
    """Quantise the F16/BF16/F32 GGUF `source` to `quant`; return the path and llama.cpp's warnings."""
    import llama_cpp
    import llama_cpp._logger as llama_logging

    if quant not in FILE_TYPES or quant == "F16":
        raise QuantizationError(f"quant must be one of Q8_0, Q5_K_M, Q4_K_M, not {quant!r}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = int(threads or os.cpu_count() or 1)
    params.ftype = FILE_TYPES[quant]
    bar = tqdm(desc=f"quantising to {quant}", unit="tensor", disable=not progress, leave=False, mininterval=1)
    notes: list[str] = []

    @llama_cpp.llama_log_callback
    def on_log(level, text, user_data):
        match = _PROGRESS.search(text or b"")
        if match:
            bar.total = int(match.group(2))
            bar.update(int(match.group(1)) - bar.n)
        elif b"required fallback quantization" in (text or b"") or level == _ERROR:
            notes.append(text.decode("utf-8", "replace").strip())

    final = Path(out_path)
    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    try:
        with atomic_path(final) as tmp:
            code = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
            if code != 0 or not tmp.is_file():
                raise QuantizationError(f"llama.cpp could not quantise {source} to {quant}: {' | '.join(notes)}")
    finally:
        llama_cpp.llama_log_set(llama_logging.llama_log_callback, ctypes.c_void_p(0))
        bar.close()
    return final, notes
