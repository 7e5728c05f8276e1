"""The models of a side-by-side evaluation: `NAME=SPEC` arguments, checked and turned into lm-eval model arguments.

SPEC is an HF checkpoint folder, a `proofkd:` reference (built in the cache
by `proofkd.core.embedded`), both run by lm-eval's `hf` model, or a `.gguf`
file, run by llama.cpp (`proofkd.evals.llama_cpp_lm`); an HF tokenizer beside
it or named with `::tokenizer=<hf folder>` gives its chat template. Everything
is checked before any model loads, and each error names the model and the
fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from proofkd.core import embedded
from proofkd.export.gguf_file import GGUFFileError, read_gguf

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class EvalSetupError(ValueError):
    """Something the command line names that is not there; raised before any model runs."""


class ModelSpecError(EvalSetupError):
    """A `--model` value that names nothing loadable."""


@dataclass(frozen=True)
class ModelSpec:
    """One `NAME=SPEC[::tokenizer=DIR]` argument."""

    name: str
    location: str
    tokenizer: str | None = None


def parse_model_spec(text: str) -> ModelSpec:
    """`NAME=SPEC` or `NAME=SPEC::tokenizer=DIR` as a ModelSpec."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise ModelSpecError(f"--model {text!r}: expected NAME=SPEC, e.g. student=outputs/quickstart/student")
    if not _NAME.fullmatch(name):
        raise ModelSpecError(
            f"--model {text!r}: NAME {name!r} must be letters, digits, '.', '_' or '-' (it names a folder)"
        )
    location, *options = rest.split("::")
    tokenizer = None
    for option in options:
        key, sep, value = option.partition("=")
        if key != "tokenizer" or not sep or not value:
            raise ModelSpecError(
                f"--model {text!r}: unknown option {option!r}; the only one is ::tokenizer=<hf folder>"
            )
        tokenizer = value
    return ModelSpec(name=name, location=location, tokenizer=tokenizer)


def with_tokenizers(specs: list[ModelSpec], tokenizers: list[str]) -> list[ModelSpec]:
    """`specs` with each `NAME=DIR` of `tokenizers` (the --tokenizer option) applied to model NAME."""
    by_name = {spec.name: spec for spec in specs}
    for item in tokenizers:
        name, sep, folder = item.partition("=")
        if not sep or not folder:
            raise ModelSpecError(f"--tokenizer {item!r}: expected NAME=<hf folder>")
        if name not in by_name:
            raise ModelSpecError(f"--tokenizer {item!r}: no --model is named {name!r} (models: {', '.join(by_name)})")
        by_name[name] = ModelSpec(name=name, location=by_name[name].location, tokenizer=folder)
    return [by_name[spec.name] for spec in specs]


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _TOKENIZER_FILES)


def _tokenizer_folder(spec: ModelSpec) -> Path:
    folder = Path(spec.tokenizer).expanduser().resolve()
    if not folder.is_dir() or not _has_tokenizer(folder):
        raise ModelSpecError(
            f"model {spec.name!r}: tokenizer folder {folder} has no tokenizer files ({', '.join(_TOKENIZER_FILES)})"
        )
    return folder


def _gguf_model_args(spec: ModelSpec, path: Path) -> dict[str, str]:
    """The arguments of `LlamaCppLM`: the file, and an HF tokenizer for chat templates when there is one."""
    try:
        read_gguf(path)
    except GGUFFileError as error:
        raise ModelSpecError(f"model {spec.name!r}: {error}") from None
    args = {"pretrained": str(path)}
    if spec.tokenizer:
        args["tokenizer"] = str(_tokenizer_folder(spec))
    elif _has_tokenizer(path.parent):
        args["tokenizer"] = str(path.parent)
    return args


def is_gguf(spec: ModelSpec) -> bool:
    return spec.location.lower().endswith(".gguf")


def model_args(spec: ModelSpec, dtype: str) -> dict[str, str]:
    """The `model_args` of lm-eval's `hf` model for `spec`, after checking that it exists."""
    if embedded.is_reference(spec.location):
        try:
            args = {"pretrained": str(embedded.resolve(spec.location))}
        except embedded.EmbeddedReferenceError as error:
            raise ModelSpecError(f"model {spec.name!r}: {error}") from error
    else:
        path = Path(spec.location).expanduser().resolve()
        if not path.exists():
            raise ModelSpecError(
                f"model {spec.name!r}: {path} does not exist; SPEC is an HF checkpoint folder, "
                f"a proofkd: reference or a .gguf file (download Hub models to a folder first)"
            )
        if is_gguf(spec):
            return _gguf_model_args(spec, path)
        if not (path / "config.json").is_file():
            raise ModelSpecError(f"model {spec.name!r}: {path} is not an HF checkpoint folder (it has no config.json)")
        args = {"pretrained": str(path)}
    if spec.tokenizer:
        args["tokenizer"] = str(_tokenizer_folder(spec))
    return {**args, "dtype": dtype}
