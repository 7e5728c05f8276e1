"""What a GGUF file says about itself, read without running it, and a clear refusal of one that is not whole.

A file cut short by a killed copy or download gets far enough into llama.cpp's
loader to fail deep inside it. So every command that runs a GGUF first reads
its header, tensor table and tensor extents with the `gguf` package's reader,
which fails on a file whose tables or tensor data are cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf

GGUF_MAGIC = b"GGUF"


class GGUFFileError(ValueError):
    """A path that is not a complete GGUF file; the message names it and the fix."""


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    architecture: str
    file_type: str  # llama.cpp's name for the file's type: F16, Q8_0, Q4_K_M, ...
    parameters: int
    size_bytes: int
    vocab_size: int | None  # the tokens of its vocabulary (None when it carries none)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.size_bytes / self.parameters


def file_type_name(code: int) -> str:
    """`Q4_K_M` for llama.cpp's file type 15, `F16` for 1, `F32` for 0."""
    try:
        name = gguf.LlamaFileType(code).name
    except ValueError:
        return f"type {code}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def read_gguf(path: str | Path) -> GGUFFile:
    """The header of `path`, or a `GGUFFileError` naming the file when it is missing, not GGUF, or cut short."""
    path = Path(path)
    fix = "export it again (proofkd export), or download it again"
    if not path.is_file():
        raise GGUFFileError(f"{path} {'is a folder' if path.is_dir() else 'does not exist'}: pass a .gguf file")
    size = path.stat().st_size
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        what = "is empty" if size == 0 else f"does not start with GGUF's magic bytes (it starts with {magic!r})"
        raise GGUFFileError(f"{path} {what}, so it is not a GGUF file: {fix}")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as error:  # the reader fails with whatever numpy raises on a cut table or tensor
        raise GGUFFileError(f"{path} is damaged or cut short (reading its tables failed: {error}); {fix}") from None
    if not reader.tensors:
        raise GGUFFileError(f"{path} holds no tensors (a vocabulary-only file?): pass a model's GGUF file")
    field = reader.fields.get("general.file_type")
    architecture = reader.fields.get("general.architecture")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return GGUFFile(
        path=path,
        architecture=architecture.contents() if architecture else "unknown",
        file_type=file_type_name(int(field.contents())) if field else "unknown",
        parameters=sum(int(tensor.n_elements) for tensor in reader.tensors),
        size_bytes=size,
        vocab_size=len(tokens.data) if tokens else None,
    )


def load_in_llama_cpp(path: str | Path, **options):
    """`llama_cpp.Llama(path, **options)` with llama.cpp's extra weight buffers (AMX, repacked layouts) off.

    On CPUs with AMX, llama-cpp-python 0.3.36 crashes (SIGSEGV) at the first decode of any quantised file when
    they are on. Off, every type runs on llama.cpp's standard CPU kernels, from the layout the file stores.
    `Llama` takes no option for them, so its default model parameters are amended while it loads.
    """
    import llama_cpp
    from llama_cpp import llama as llama_module

    defaults = llama_module.llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_module.llama_cpp.llama_model_default_params = without_extra_buffers
    try:
        return llama_cpp.Llama(model_path=str(path), **options)
    finally:
        llama_module.llama_cpp.llama_model_default_params = defaults
