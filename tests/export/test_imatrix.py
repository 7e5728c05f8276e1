"""The importance matrix: the float64 sums of squared inputs, named and sized as llama.cpp's weights, in its GGUF
imatrix format, handed to its quantiser, and used by the export only where it does not make files worse."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

from proofkd.core.data.stem import generate
from proofkd.core.templates import render_stage1
from proofkd.export.convert import convert
from proofkd.export.imatrix import calibration_text, compute_imatrix, read_imatrix_values, write_imatrix
from proofkd.export.publish import export
from proofkd.export.quantize import quantize
from tests.helpers import make_tiny_qwen3

pytestmark = pytest.mark.slow

TEXT = "\n\n".join(render_stage1(r["question"], r["CoT"], r["response"]).text for r in generate("train", 12, seed=9))


def float64_sums(checkpoint, windows: list[list[int]]) -> dict[str, np.ndarray]:
    """Every block linear's inputs kept whole in a float64 copy of the model, squared and summed at the end."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float64).eval()
    inputs: dict[str, list[np.ndarray]] = {}
    for name, module in model.model.layers.named_modules(prefix="model.layers"):
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(
                lambda m, x, name=name: inputs.setdefault(name, []).append(x[0][0].numpy().copy())
            )
    with torch.no_grad():
        for window in windows:
            model(torch.tensor([window]))
    return {name: (np.concatenate(parts) ** 2).sum(axis=0) for name, parts in inputs.items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("imatrix")
    model = make_tiny_qwen3(root)
    return model, convert(model, root / "tiny-F16.gguf", progress=False)


def test_imatrix_is_the_float64_sum_of_squared_inputs_per_column(tiny):
    from transformers import AutoTokenizer

    model, _ = tiny
    matrix = compute_imatrix(model, text=TEXT, chunk_size=48, chunks=3)
    ids = AutoTokenizer.from_pretrained(model)(TEXT, add_special_tokens=False)["input_ids"]
    want = float64_sums(model, [ids[i : i + 48] for i in (0, 48, 96)])
    assert (matrix.chunk_count, matrix.chunk_size) == (3, 48)
    names = {
        "model.layers.0.self_attn.q_proj": "blk.0.attn_q.weight",
        "model.layers.0.self_attn.o_proj": "blk.0.attn_output.weight",
        "model.layers.0.mlp.down_proj": "blk.0.ffn_down.weight",
    }
    assert len(matrix.sums) == len(want) == 7
    for hf_name, gguf_name in names.items():
        np.testing.assert_allclose(matrix.sums[gguf_name], want[hf_name], rtol=1e-4)
        assert matrix.counts[gguf_name] == 144
    np.testing.assert_allclose(
        matrix.values()["blk.0.ffn_down.weight"], want["model.layers.0.mlp.down_proj"] / 144, rtol=1e-4
    )


def test_imatrix_names_and_sizes_are_those_of_the_gguf_weights(tiny):
    model, f16 = tiny
    matrix = compute_imatrix(model, text=TEXT, chunk_size=64, chunks=1)
    weights = {
        t.name: int(t.shape[0]) for t in gguf.GGUFReader(f16).tensors if t.name.startswith("blk.") and len(t.shape) == 2
    }
    assert {name: values.size for name, values in matrix.values().items()} == weights


def test_the_file_is_llama_cpps_imatrix_format_and_reads_back(tiny, tmp_path):
    model, _ = tiny
    matrix = compute_imatrix(model, text=TEXT, chunk_size=64, chunks=2, dataset="my calibration.txt")
    path = write_imatrix(matrix, tmp_path / "tiny.imatrix.gguf")
    reader = gguf.GGUFReader(path)
    fields = {
        key: reader.fields[key].contents()
        for key in ("general.type", "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")
    }
    assert fields == {
        "general.type": "imatrix",
        "imatrix.datasets": ["my calibration.txt"],
        "imatrix.chunk_count": 2,
        "imatrix.chunk_size": 64,
    }
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["blk.0.ffn_down.weight.in_sum2"].shape.tolist() == [512, 1]
    assert tensors["blk.0.ffn_down.weight.counts"].shape.tolist() == [1, 1]
    assert float(tensors["blk.0.ffn_down.weight.counts"].data.reshape(-1)[0]) == 128
    back = read_imatrix_values(path)
    assert back.keys() == matrix.values().keys()
    for name, values in matrix.values().items():
        np.testing.assert_allclose(back[name], values, rtol=1e-6)


def test_the_quantiser_is_handed_the_imatrix(tiny, tmp_path):
    model, f16 = tiny
    path = write_imatrix(compute_imatrix(model, text=TEXT, chunk_size=64, chunks=2), tmp_path / "m.imatrix.gguf")
    plain, _ = quantize(f16, tmp_path / "plain-Q4_K_M.gguf", "Q4_K_M", threads=2, progress=False)
    weighted, _ = quantize(f16, tmp_path / "weighted-Q4_K_M.gguf", "Q4_K_M", imatrix=path, threads=2, progress=False)
    assert plain.stat().st_size == weighted.stat().st_size and plain.read_bytes() != weighted.read_bytes()


def test_export_keeps_the_file_closer_on_the_calibration_text(tiny, tmp_path):
    from proofkd.export.verify import Reference, verify

    model, f16 = tiny
    done = export(model, tmp_path / "out", ["Q4_K_M", "Q8_0"], name="tiny", threads=2, progress=False)
    report = json.loads((tmp_path / "out" / "verification.json").read_text())["imatrix"]
    assert report["file"] == "tiny.imatrix.gguf" and done.imatrix.is_file()
    assert "train split, Stage-1 template (4 windows of 512 tokens)" in report["calibration"]
    assert list(report["choices"]) == ["Q4_K_M"]  # Q8_0 takes no importance matrix
    choice = report["choices"]["Q4_K_M"]
    assert choice["used"] == (choice["calibration_kld_with"] < choice["calibration_kld_without"])
    assert report["types"] == (["Q4_K_M"] if choice["used"] else [])
    # The file kept is the one the choice names, and its KLD on the calibration text is the one recorded.
    calibration = Reference.from_checkpoint(model, text=calibration_text(), windows=2, greedy_tokens=0)
    kept = verify(tmp_path / "out" / "tiny-Q4_K_M.gguf", calibration, threads=2).statistics.kld_mean
    assert kept == pytest.approx(min(choice["calibration_kld_with"], choice["calibration_kld_without"]), rel=1e-6)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "tiny-Q4_K_M.gguf",
        "tiny-Q8_0.gguf",
        "tiny.imatrix.gguf",
        "verification.json",
    ]


def test_export_without_imatrix_writes_none(tiny, tmp_path):
    model, _ = tiny
    done = export(model, tmp_path / "out", ["Q4_K_M"], name="tiny", imatrix=False, threads=2, progress=False)
    assert done.imatrix is None and not list((tmp_path / "out").glob("*.imatrix.gguf"))
    assert json.loads((tmp_path / "out" / "verification.json").read_text())["imatrix"] is None
