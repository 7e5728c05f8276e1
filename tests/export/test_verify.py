"""`proofkd verify`: llama-perplexity's statistics held to a plain loop, the verdict's rules, and files refused
by name before any model runs."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import numpy as np
import pytest

from proofkd.cli import main
from proofkd.export import verify as verify_module
from proofkd.export.convert import convert
from proofkd.export.gguf_file import GGUFFileError, read_gguf
from proofkd.export.quantize import quantize
from proofkd.export.verify import (
    LOG_PROB_FLOOR,
    TIE_NATS,
    KLStatistics,
    Reference,
    VerificationInputError,
    cut_windows,
    per_token_figures,
    scored_positions,
    verify,
)
from tests.helpers import make_tiny_qwen3


def plain_statistics(base_logits, gguf_logits, targets) -> dict:
    """llama-perplexity's rules, one token and one vocabulary entry at a time, in Python floats."""

    def log_softmax(row):
        top = max(row)
        total = math.log(sum(math.exp(x - top) for x in row))
        return [x - top - total for x in row]

    klds, same, dps, ratios = [], [], [], []
    for base_row, gguf_row, target in zip(base_logits.tolist(), gguf_logits.tolist(), targets, strict=True):
        p, q = log_softmax(base_row), log_softmax(gguf_row)
        klds.append(sum(math.exp(a) * (a - b) for a, b in zip(p, q, strict=True) if a > LOG_PROB_FLOOR))
        same.append(p.index(max(p)) == q.index(max(q)))
        dps.append(math.exp(q[target]) - math.exp(p[target]))
        ratios.append(p[target] - q[target])
    n = len(klds)

    def mean(values):
        return sum(values) / len(values)

    def standard_error(values):
        m = mean(values)
        return math.sqrt((sum(v * v for v in values) / n - m * m) / (n - 1))

    def percentile(values, fraction):
        ordered, at = sorted(values), fraction * (n - 1)
        low = math.floor(at)
        high = min(low + 1, n - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (at - low)

    agree = mean([float(s) for s in same])
    return {
        "kld_mean": mean(klds),
        "kld_mean_err": standard_error(klds),
        "kld_median": percentile(klds, 0.5),
        "kld_p99": percentile(klds, 0.99),
        "kld_p999": percentile(klds, 0.999),
        "kld_max": max(klds),
        "same_top": agree,
        "same_top_err": math.sqrt(agree * (1 - agree) / (n - 1)),
        "rms_dp": math.sqrt(mean([d * d for d in dps])),
        "ln_ppl_ratio": mean(ratios),
        "ln_ppl_ratio_err": standard_error(ratios),
    }


@pytest.mark.parametrize("seed", [random.randrange(2**31) for _ in range(2)])
def test_statistics_follow_llama_perplexity_rules(seed):
    rng = np.random.default_rng(seed)
    # A wide spread puts many entries below the -16 floor, which the KLD leaves out.
    base = rng.normal(scale=6.0, size=(3, 40, 97)).astype(np.float32)
    quant = base + rng.normal(scale=0.3, size=base.shape).astype(np.float32)
    targets = rng.integers(0, 97, size=(3, 40))
    parts = [per_token_figures(b, q, t) for b, q, t in zip(base, quant, targets, strict=True)]
    got = dataclasses.asdict(KLStatistics.of(parts))
    want = plain_statistics(base.reshape(120, 97), quant.reshape(120, 97), targets.reshape(-1).tolist())
    assert got["tokens"] == 120
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_only_the_second_half_of_each_window_is_scored():
    ids = list(range(1000))
    windows = cut_windows(ids, 256, 3)
    assert [w[0] for w in windows] == [0, 256, 512]
    scored = scored_positions(256)
    # positions 128..254 predict tokens 129..255: each has at least half a window of context
    assert (scored.start, scored.stop) == (128, 255)
    assert cut_windows(ids[:40], 256, 3) == [ids[:40]]
    with pytest.raises(VerificationInputError, match="the verification text is 5 tokens; give at least 16"):
        cut_windows(ids[:5], 256, 1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random one-layer Qwen3, its F16 and Q8_0 files, and a reference over two 64-token windows."""
    root = tmp_path_factory.mktemp("verify")
    model = make_tiny_qwen3(root)
    f16 = convert(model, root / "tiny-F16.gguf", progress=False)
    q8, _ = quantize(f16, root / "tiny-Q8_0.gguf", "Q8_0", threads=2, progress=False)
    return model, f16, q8, Reference.from_checkpoint(model, window=64, windows=2)


@pytest.mark.slow
def test_a_faithful_file_passes_and_a_departing_greedy_output_fails(tiny):
    model, f16, _, reference = tiny
    result = verify(f16, reference, threads=2)
    assert result.quant == "F16" and result.passed, result.problems
    assert result.statistics.tokens == 2 * 31 and result.statistics.kld_mean < 1e-4
    assert result.greedy.agreed == result.greedy.compared == len(reference.greedy_ids)

    # Pretend the HF model chose another token at step 3, by a clear margin: the file departs there.
    step, logits = 2, reference.greedy_logits.copy()
    theirs = reference.greedy_ids[step]
    other = (theirs + 1) % logits.shape[-1]
    logits[step, other] = logits[step, theirs] + 1.0
    departed = dataclasses.replace(
        reference,
        greedy_ids=[*reference.greedy_ids[:step], other, *reference.greedy_ids[step + 1 :]],
        greedy_logits=logits,
    )
    result = verify(f16, departed, threads=2)
    assert not result.passed
    assert result.greedy.agreed == step and result.greedy.margin == pytest.approx(1.0, abs=1e-5)
    assert "greedy output departs from the HF model's at token 3 (the HF model prefers its own token by 1.00 nats)" in (
        result.problems
    )
    # Judged as a 4-bit file, only its first token is held: parting at the third is reported, not failed.
    result = verify(f16, departed, quant="Q4_K_M", threads=2)
    assert result.passed and result.greedy.describe() == "parts at 3/32 (after the 1 held, 1.00 nats)"
    # The same parting at a near tie is no departure: the comparison just ends there.
    logits[step, other] = logits[step, theirs] + TIE_NATS / 2
    tie = dataclasses.replace(departed, greedy_logits=logits)
    result = verify(f16, tie, threads=2)
    assert result.passed and "near tie" in result.greedy.describe()


@pytest.mark.slow
def test_other_token_ids_fail_the_file(tiny):
    _, f16, _, reference = tiny
    wrong = dataclasses.replace(reference, ids=[*reference.ids[:-1], reference.ids[-1] + 1])
    assert verify(f16, wrong, threads=2).problems == ["llama.cpp tokenises the text to other ids than the HF tokenizer"]


@pytest.mark.slow
def test_verify_command_prints_the_table_and_writes_json(tiny, tmp_path, capsys):
    model, f16, q8, _ = tiny
    out = tmp_path / "figures.json"
    args = ["verify", str(f16), str(q8), "--reference", str(model), "--window", "64", "--windows", "2"]
    code = main([*args, "--threads", "2", "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| tiny-F16.gguf | F16 |" in captured.out and "| tiny-Q8_0.gguf | Q8_0 |" in captured.out
    report = json.loads(out.read_text())
    assert [f["quant"] for f in report["files"]] == ["F16", "Q8_0"] and all(f["passed"] for f in report["files"])
    assert report["files"][1]["statistics"]["kld_mean"] > report["files"][0]["statistics"]["kld_mean"]


def damaged_files(root, good):
    data = good.read_bytes()
    cases = {
        "empty.gguf": (b"", "is empty, so it is not a GGUF file"),
        "foreign.gguf": (b"PK\x03\x04" + data[4:200], "does not start with GGUF's magic bytes"),
        "header-cut.gguf": (data[:100], "is damaged or cut short"),
        "half.gguf": (data[: len(data) // 2], "is damaged or cut short"),
        "last-byte-cut.gguf": (data[:-1], "is damaged or cut short"),
    }
    for name, (content, _) in cases.items():
        (root / name).write_bytes(content)
    return {root / name: message for name, (_, message) in cases.items()}


@pytest.mark.slow
def test_a_damaged_file_is_refused_by_name(tiny, tmp_path):
    for path, message in damaged_files(tmp_path, tiny[1]).items():
        with pytest.raises(GGUFFileError, match=message) as caught:
            read_gguf(path)
        assert str(path) in str(caught.value)
    with pytest.raises(GGUFFileError, match="does not exist"):
        read_gguf(tmp_path / "missing.gguf")
    with pytest.raises(GGUFFileError, match="is a folder"):
        read_gguf(tmp_path)
    header = read_gguf(tiny[2])
    assert header.file_type == "Q8_0" and header.architecture == "qwen3" and 8 < header.bits_per_weight < 9.5


@pytest.mark.slow
def test_verify_and_eval_refuse_a_cut_file_before_any_model_runs(tiny, tmp_path, capsys, monkeypatch):
    model, f16, _, _ = tiny
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(f16.read_bytes()[: f16.stat().st_size // 2])

    def no_model(*args, **kwargs):
        raise AssertionError("a model ran before the file was checked")

    monkeypatch.setattr(verify_module.Reference, "from_checkpoint", no_model)
    assert main(["verify", str(f16), str(cut), "--reference", str(model)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"proofkd verify: {cut} is damaged or cut short") and "Traceback" not in err

    monkeypatch.setattr("proofkd.evals.report.evaluate_model", no_model)
    assert (
        main(
            ["eval", "--model", f"q={cut}::tokenizer={model}", "--tasks", "proofkd_stem", "--out", str(tmp_path / "e")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(f"proofkd eval: model 'q': {cut} is damaged or cut short") and "Traceback" not in err


def test_a_bad_text_file_is_named(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("Problème".encode("latin-1"))
    (tmp_path / "blank.txt").write_text("  \n")
    with pytest.raises(VerificationInputError, match=r"latin1.txt is not UTF-8 \(byte 0xe8 at offset 5\)"):
        verify_module.read_text_file(tmp_path / "latin1.txt")
    with pytest.raises(VerificationInputError, match="blank.txt is empty"):
        verify_module.read_text_file(tmp_path / "blank.txt")
    with pytest.raises(VerificationInputError, match="missing.txt does not exist"):
        verify_module.read_text_file(tmp_path / "missing.txt")


@pytest.mark.slow
def test_a_file_of_another_model_is_refused_before_any_model_runs(tiny, tmp_path, capsys, smollm2):
    _, f16, _, _ = tiny
    assert main(["verify", str(f16), "--reference", str(smollm2)]) == 2
    err = capsys.readouterr().err
    assert f"proofkd verify: {f16} has 640 vocabulary rows and {smollm2} has 49152" in err
    assert "pass the HF folder it came from as --reference" in err
