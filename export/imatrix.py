"""The importance matrix llama.cpp's quantiser weighs rounding errors by, computed in torch from the HF model.

For every linear layer inside the transformer blocks (the `blk.*` weights), per
input column j, the sum over the calibration tokens of x_j^2 and the number of
tokens: what llama.cpp's `llama-imatrix` measures on its own kernels. That
program is C++ that llama-cpp-python does not ship; the HF model the file
comes from gives the same sums in float64, so they are computed here, one
window of `chunk_size` tokens at a time, as `llama-imatrix` reads its text.

The file is llama.cpp's GGUF imatrix format (`general.type = imatrix`,
`imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`, and F32
tensors `<weight>.in_sum2` [columns, 1] and `<weight>.counts` [1, 1]), so
`llama-quantize --imatrix` reads it too. The quantiser receives sum / count per
column through `llama_model_imatrix_data`.

Calibration text is the recipes' training data in its template: by default
generated training-split problems in the Stage-1 template, disjoint from the
held-out text that verification scores. The exporter converts dense models
only (Qwen3, Llama), so there is one matrix per weight; a mixture of experts
would need one per expert.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from proofkd.core.io import atomic_path

from .convert import read_checkpoint
from .verify import stage1_text

DEFAULT_CHUNK_SIZE = 512
DEFAULT_CHUNKS = 4
DEFAULT_DATASET = "proofkd generated STEM problems, train split, Stage-1 template"


def calibration_text(rows: int = 96, seed: int = 7) -> str:
    """The default calibration text: training-split problems in the Stage-1 template."""
    return stage1_text("train", rows, seed)


@dataclass(frozen=True)
class Imatrix:
    """Per GGUF weight name, the sum of squared inputs per input column, and the tokens counted."""

    sums: dict[str, np.ndarray]
    counts: dict[str, int]
    dataset: str
    chunk_count: int
    chunk_size: int

    def values(self) -> dict[str, np.ndarray]:
        """What the quantiser takes: the mean squared input per column."""
        return {name: (total / self.counts[name]).astype(np.float32) for name, total in self.sums.items()}


def compute_imatrix(
    checkpoint: str | Path,
    *,
    text: str | None = None,
    dataset: str = DEFAULT_DATASET,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunks: int = DEFAULT_CHUNKS,
) -> Imatrix:
    """Run the HF model over up to `chunks` windows of the calibration text, summing every block linear's inputs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch, config = read_checkpoint(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = tokenizer(text if text is not None else calibration_text(), add_special_tokens=False)["input_ids"]
    windows = [ids[i : i + chunk_size] for i in range(0, len(ids), chunk_size)][:chunks]
    windows = [w for w in windows if len(w) == chunk_size] or windows[:1]
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    names = gguf.get_tensor_name_map(arch.arch, config["num_hidden_layers"])
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook_for(weight_name: str):
        def accumulate(module, inputs):
            x = inputs[0].detach().reshape(-1, module.in_features).double()
            sums[weight_name] = sums.get(weight_name, 0) + (x * x).sum(dim=0)
            counts[weight_name] = counts.get(weight_name, 0) + x.shape[0]

        return accumulate

    handles = []
    for module_name, module in model.model.layers.named_modules(prefix="model.layers"):
        if isinstance(module, torch.nn.Linear):
            weight_name = names.get_name(f"{module_name}.weight", try_suffixes=(".weight",))
            handles.append(module.register_forward_pre_hook(hook_for(weight_name)))
    try:
        with torch.no_grad():
            for window in windows:
                model(torch.tensor([window]))
    finally:
        for handle in handles:
            handle.remove()
    return Imatrix(
        sums={name: total.numpy() for name, total in sums.items()},
        counts=counts,
        dataset=dataset,
        chunk_count=len(windows),
        chunk_size=len(windows[0]),
    )


def write_imatrix(imatrix: Imatrix, path: str | Path) -> Path:
    """The imatrix as llama.cpp's GGUF imatrix file at `path`."""
    final = Path(path)
    with atomic_path(final) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch="imatrix")
        writer.add_type("imatrix")
        writer.add_array("imatrix.datasets", [imatrix.dataset])
        writer.add_uint32("imatrix.chunk_count", imatrix.chunk_count)
        writer.add_uint32("imatrix.chunk_size", imatrix.chunk_size)
        for name, total in imatrix.sums.items():
            writer.add_tensor(f"{name}.in_sum2", total.astype(np.float32).reshape(1, -1))
            writer.add_tensor(f"{name}.counts", np.array([[imatrix.counts[name]]], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return final


def read_imatrix_values(path: str | Path) -> dict[str, np.ndarray]:
    """Per weight name, sum / count per column, from a GGUF imatrix file (as `llama-quantize` reads it)."""
    reader = gguf.GGUFReader(path)
    tensors = {tensor.name: np.asarray(tensor.data, dtype=np.float32) for tensor in reader.tensors}
    values = {}
    for name, total in tensors.items():
        if name.endswith(".in_sum2"):
            weight = name.removesuffix(".in_sum2")
            count = float(tensors[f"{weight}.counts"].reshape(-1)[0])
            values[weight] = total.reshape(-1) / count if count > 0 else np.ones(total.size, dtype=np.float32)
    return values
