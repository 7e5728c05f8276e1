"""Hugging Face checkpoint -> GGUF (F16, BF16 or F32), written one tensor at a time.

No package on the index ships llama.cpp's converter, so this module writes the
file with the `gguf` package's writer and tensor-name maps, for the
architectures of proofkd's recipes: `qwen3` (Qwen3ForCausalLM) and `llama`
(LlamaForCausalLM, e.g. the embedded SmolLM2). What llama.cpp needs and is
easy to get wrong:

- llama's q and k projections are stored with each head's rotary halves
  interleaved (llama.cpp rotates consecutive pairs); Qwen3's are not (it
  rotates the halves, as transformers does);
- Qwen3 must carry its head size (`attention.key_length`/`value_length`),
  which differs from hidden / heads in some models;
- the RoPE base sits under `rope_parameters` in transformers 5 configs, and a
  missing one silently becomes 10000;
- a tied output head is not written (llama.cpp reuses the embedding);
- norms and other 1-D tensors stay F32.

Tensors are read from the safetensors files lazily and written in the order
their headers were declared, so memory stays near one tensor. The file is
written under a temporary name and moved into place when complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from proofkd.core.io import atomic_path
from proofkd.core.logs import get_logger

from .tokenizer import add_tokenizer

LOG = get_logger(__name__)

OUT_TYPES = {
    "F16": (np.float16, gguf.LlamaFileType.MOSTLY_F16),
    "BF16": (None, gguf.LlamaFileType.MOSTLY_BF16),
    "F32": (np.float32, gguf.LlamaFileType.ALL_F32),
}
F16_MAX = 65504.0


class ConversionError(ValueError):
    """A checkpoint that cannot be converted as asked."""


@dataclass(frozen=True)
class Architecture:
    name: str
    arch: gguf.MODEL_ARCH
    permute_qk: bool


ARCHITECTURES = {
    "LlamaForCausalLM": Architecture("llama", gguf.MODEL_ARCH.LLAMA, permute_qk=True),
    "Qwen3ForCausalLM": Architecture("qwen3", gguf.MODEL_ARCH.QWEN3, permute_qk=False),
}


def interleave_rotary_halves(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's rows from [first half | second half] to pairs (0, d/2), (1, d/2 + 1), ..."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def read_checkpoint(checkpoint: str | Path) -> tuple[Architecture, dict]:
    """The architecture and `config.json` of a checkpoint folder this converter can convert, else a
    `ConversionError` naming the file and the fix. Cheap: called before anything is written."""
    folder = Path(checkpoint)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ConversionError(
            f"{folder} {what}: pass the folder a training run saved (its output_dir, or a checkpoint-N in it)"
        )
    path = folder / "config.json"
    if not path.is_file():
        raise ConversionError(f"{folder} is not a model folder (no config.json): pass the folder save_pretrained wrote")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConversionError(f"{path} is not UTF-8 text (byte {error.start}); restore it from the run") from None
    except json.JSONDecodeError as error:
        raise ConversionError(
            f"{path} is not valid JSON: line {error.lineno}, column {error.colno} ({error.msg}). "
            "Restore the file save_pretrained wrote, or fix that line"
        ) from None
    if not isinstance(config, dict):
        raise ConversionError(f"{path} holds {type(config).__name__}, not a JSON object: restore it from the run")
    architecture = (config.get("architectures") or ["(none named)"])[0]
    if architecture not in ARCHITECTURES:
        raise ConversionError(
            f"{path}: architecture {architecture} cannot be converted; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    _tensor_files(folder)
    return ARCHITECTURES[architecture], config


def _tensor_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise ConversionError(f"{folder} has no model.safetensors (or index); save the model with safetensors")


def _rope_base(config: dict) -> float:
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in (None, "default"):
        raise ConversionError(f"rope scaling {kind!r} is not supported by this converter")
    base = params.get("rope_theta", config.get("rope_theta"))
    if base is None:
        raise ConversionError("the config names no rope_theta (top level or under rope_parameters)")
    return float(base)


def _head_dim(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _add_hyperparameters(writer: gguf.GGUFWriter, arch: Architecture, config: dict, file_type, name: str) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads", config["num_attention_heads"]))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_rope_freq_base(_rope_base(config))
    head_dim = _head_dim(config)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    if arch.name == "llama":
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


@dataclass(frozen=True)
class _Planned:
    hf_name: str
    gguf_name: str
    file: Path
    shape: tuple[int, ...]
    keep_f32: bool


def _plan(arch: Architecture, config: dict, files: list[Path]) -> list[_Planned]:
    names = gguf.get_tensor_name_map(arch.arch, config["num_hidden_layers"])
    tied = bool(config.get("tie_word_embeddings", False))
    planned = []
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for hf_name in handle.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
                    continue
                gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise ConversionError(f"no GGUF name for tensor {hf_name!r} of a {arch.name} model")
                shape = tuple(handle.get_slice(hf_name).get_shape())
                keep_f32 = len(shape) <= 1 or gguf_name.endswith("_norm.weight")
                planned.append(_Planned(hf_name, gguf_name, file, shape, keep_f32))
    return planned


def _load(item: _Planned, arch: Architecture, config: dict) -> torch.Tensor:
    with safe_open(str(item.file), framework="pt") as handle:
        tensor = handle.get_tensor(item.hf_name).to(torch.float32)
    if arch.permute_qk and (".self_attn.q_proj." in item.hf_name or ".self_attn.k_proj." in item.hf_name):
        heads = config["num_attention_heads"]
        if ".k_proj." in item.hf_name:
            heads = config.get("num_key_value_heads", heads)
        tensor = interleave_rotary_halves(tensor, heads)
    return tensor


def _encode(tensor: torch.Tensor, item: _Planned, out_type: str) -> np.ndarray:
    """The bytes of one tensor as its header declared them."""
    if item.keep_f32 or out_type == "F32":
        return tensor.numpy()
    if out_type == "BF16":
        return gguf.quants.quantize(tensor.numpy(), gguf.GGMLQuantizationType.BF16)
    peak = float(tensor.abs().max()) if tensor.numel() else 0.0
    if peak > F16_MAX:
        raise ConversionError(f"{item.hf_name} holds {peak:.3g}, beyond F16's range; convert to BF16 instead")
    return tensor.numpy().astype(np.float16)


def convert(
    checkpoint: str | Path,
    out_path: str | Path,
    *,
    out_type: str = "F16",
    pre_tokenizer: str | None = None,
    progress: bool = True,
) -> Path:
    """Write the HF checkpoint folder `checkpoint` as a GGUF file at `out_path`."""
    folder = Path(checkpoint)
    if out_type not in OUT_TYPES:
        raise ConversionError(f"out_type must be one of {', '.join(OUT_TYPES)}, not {out_type!r}")
    arch, config = read_checkpoint(folder)
    plan = _plan(arch, config, _tensor_files(folder))
    numpy_type, file_type = OUT_TYPES[out_type]
    final = Path(out_path)
    with atomic_path(final) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch.name, use_temp_file=False)
        _add_hyperparameters(writer, arch, config, file_type, config.get("_name_or_path") or folder.name)
        pre = add_tokenizer(writer, folder, rows=config["vocab_size"], pre_tokenizer=pre_tokenizer)
        for item in plan:
            if item.keep_f32 or out_type == "F32":
                writer.add_tensor_info(item.gguf_name, item.shape, np.dtype(np.float32), 4 * int(np.prod(item.shape)))
            elif out_type == "BF16":
                kind = gguf.GGMLQuantizationType.BF16
                byte_shape = gguf.quant_shape_to_byte_shape(item.shape, kind)
                size = int(np.prod(byte_shape))
                writer.add_tensor_info(item.gguf_name, byte_shape, np.dtype(np.uint8), size, raw_dtype=kind)
            else:
                writer.add_tensor_info(item.gguf_name, item.shape, np.dtype(numpy_type), 2 * int(np.prod(item.shape)))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        bar = tqdm(
            total=len(plan),
            desc=f"writing {final.name}",
            unit="tensor",
            disable=not progress,
            leave=False,
            mininterval=1,
        )
        for item in plan:
            writer.write_tensor_data(_encode(_load(item, arch, config), item, out_type))
            bar.update(1)
        bar.close()
        writer.close()
    LOG.info("wrote %s (%s, %d tensors, pre-tokenizer %s)", final, out_type, len(plan), pre)
    return final
