"""Real runs through lm-eval on the embedded SmolLM2 model: every offline task, and a three-model report."""

from __future__ import annotations

import json

import pytest

from proofkd.evals import TASKS_DIR, report
from proofkd.evals.models import ModelSpec

pytestmark = pytest.mark.slow

# Each offline task: (metric, lowest, highest) of every key it must report.
EXPECTED = {
    "proofkd_stem_synthetic": [("correct", 0, 1), ("format", 0, 1), ("derivation_words", 0, 10_000)],
    "proofkd_legal_qa": [("rougeL", 0, 1), ("term_coverage", 0, 1), ("answered", 0, 1)],
    "proofkd_legal_mc": [("acc", 0, 1), ("acc_norm", 0, 1)],
    "proofkd_math_competition": [("accuracy", 0, 1), ("answer_line", 0, 1)],
}
GROUPS = {"proofkd_stem": "correct", "proofkd_legal": "rougeL", "proofkd_math": "accuracy"}
LIMIT = 2


def test_every_offline_task_runs_on_smollm2(smollm2, tmp_path, monkeypatch):
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    monkeypatch.chdir(tmp_path)
    tracker = EvaluationTracker(output_path=str(tmp_path / "out" / "results.json"))
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={smollm2},dtype=float32",
        tasks=list(GROUPS),
        task_manager=TaskManager(include_path=str(TASKS_DIR)),
        device="cpu",
        batch_size=1,
        limit=LIMIT,
        gen_kwargs={"max_gen_toks": 24},
        log_samples=True,
        evaluation_tracker=tracker,
    )
    for task, metrics in EXPECTED.items():
        assert results["n-samples"][task]["effective"] == LIMIT
        for metric, low, high in metrics:
            assert low <= results["results"][task][f"{metric},none"] <= high, (task, metric)
    for group, metric in GROUPS.items():
        assert f"{metric},none" in results["results"][group]
    # Greedy generation kept the tasks' settings under the override.
    config = results["configs"]["proofkd_stem_synthetic"]["generation_kwargs"]
    assert config["max_gen_toks"] == 24 and config["do_sample"] is False and "<|im_end|>" in config["until"]

    samples = results.pop("samples")
    assert all(len(samples[task]) == LIMIT for task in EXPECTED)
    stem_sample = samples["proofkd_stem_synthetic"][0]
    assert stem_sample["arguments"][0][0].endswith("Proof:\n")
    assert isinstance(stem_sample["resps"][0][0], str)
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in EXPECTED:
        tracker.save_results_samples(task_name=task, samples=samples[task])
        (log,) = (tmp_path / "out").glob(f"samples_{task}_*.jsonl")
        assert len(log.read_text().splitlines()) == LIMIT


def test_the_report_compares_a_teacher_its_gguf_and_a_student(smollm2, tmp_path, monkeypatch):
    from proofkd.core import embedded

    monkeypatch.chdir(tmp_path)
    # The embedded teacher was converted from this GGUF, whose folder has no HF tokenizer: it is named.
    gguf = embedded.smollm2_gguf_path()
    models = [
        ModelSpec("teacher", str(smollm2)),
        ModelSpec("teacher-gguf", str(gguf), tokenizer=str(smollm2)),
        ModelSpec("student", "proofkd:smollm2-135m-instruct?layers=4"),
    ]
    names = [m.name for m in models]
    lines = []
    paths = report.run_side_by_side(models, ["proofkd_legal_mc"], "out", limit=LIMIT, log=lines.append)

    out = tmp_path / "out"
    assert [p.resolve() for p in paths] == [out / "report.md", out / "report.png", out / "report.json"]
    table = (out / "report.md").read_text()
    assert "| task | metric | n | teacher | teacher-gguf | student |" in table
    assert "| proofkd_legal_mc | acc | 2 |" in table
    assert (out / "report.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    logged = {}
    for model in names:
        (samples,) = (out / model).glob("samples_proofkd_legal_mc_*.jsonl")
        logged[model] = [json.loads(line) for line in samples.read_text().splitlines()]
        assert len(logged[model]) == LIMIT and all(0 <= s["acc"] <= 1 for s in logged[model])
        assert list((out / model).glob("results_*.json"))
    # The teacher's weights are this GGUF's, dequantised; llama.cpp runs them on its own kernels (with
    # activations rounded to 8 bits), so each option's log-likelihood moves a little, not its order.
    for ours, theirs in zip(logged["teacher"], logged["teacher-gguf"], strict=True):
        for (a, _), (b, _) in zip(ours["filtered_resps"], theirs["filtered_resps"], strict=True):
            assert float(a) == pytest.approx(float(b), abs=0.25)
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert all(set(row["values"]) == set(names) for row in rows)
    assert [line.split(":")[0] for line in lines[:6]] == [
        f"[{i}/3] {name}" for i, name in enumerate(names, 1) for _ in "ab"
    ]


def test_a_failing_model_keeps_the_others_results_and_the_report(smollm2, tmp_path, monkeypatch, capsys):
    from proofkd.cli import main

    real = report.evaluate_model

    def breaks_on_the_second(spec, *args, **kwargs):
        if spec.name == "broken":
            raise RuntimeError("the model ran out of memory")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(report, "evaluate_model", breaks_on_the_second)
    out = tmp_path / "out"
    models = ["--model", f"broken={smollm2}", "--model", f"teacher={smollm2}"]
    code = main(["eval", *models, "--tasks", "proofkd_legal_mc", "--limit", str(LIMIT), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert (
        f"proofkd eval: broken failed (the traceback is above; their cells read n/a); the report of the others is in {out / 'report.md'}"
        in err
    )
    table = (out / "report.md").read_text()
    assert "failed: broken (RuntimeError: the model ran out of memory)" in table
    row = next(line for line in table.splitlines() if line.startswith("| proofkd_legal_mc | acc |"))
    assert row.split("|")[4].strip() == "n/a" and row.split("|")[5].strip() != "n/a"
    assert list((out / "teacher").glob("results_*.json")) and not (out / "broken").exists()


def test_an_f16_gguf_in_llama_cpp_scores_as_the_hf_model(smollm2, tmp_path, monkeypatch):
    """llama.cpp's kernels on an F16 export: each option's log-likelihood within 0.02 nats of the HF model's
    in float32, the same choices, and the same greedy answers."""
    from proofkd.export.convert import convert

    monkeypatch.chdir(tmp_path)
    f16 = convert(smollm2, tmp_path / "smollm2-F16.gguf", progress=False)
    models = [ModelSpec("hf", str(smollm2)), ModelSpec("f16", str(f16))]
    tasks = ["proofkd_legal_mc", "proofkd_stem_synthetic"]
    report.run_side_by_side(models, tasks, "out", limit=3, max_gen_toks=32, log=lambda line: None)

    def samples(model, task):
        (path,) = (tmp_path / "out" / model).glob(f"samples_{task}_*.jsonl")
        return [json.loads(line) for line in path.read_text().splitlines()]

    for ours, theirs in zip(samples("hf", tasks[0]), samples("f16", tasks[0]), strict=True):
        assert ours["acc"] == theirs["acc"]
        for (a, _), (b, _) in zip(ours["filtered_resps"], theirs["filtered_resps"], strict=True):
            assert float(a) == pytest.approx(float(b), abs=0.02)
    for ours, theirs in zip(samples("hf", tasks[1]), samples("f16", tasks[1]), strict=True):
        assert ours["resps"] == theirs["resps"] and ours["resps"][0][0].strip()


def test_an_interrupted_eval_keeps_the_report_of_the_models_that_finished(smollm2, tmp_path, monkeypatch):
    real = report.evaluate_model

    def interrupted_on_the_second(spec, *args, **kwargs):
        if spec.name == "second":
            raise KeyboardInterrupt
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(report, "evaluate_model", interrupted_on_the_second)
    models = [ModelSpec("first", str(smollm2)), ModelSpec("second", str(smollm2)), ModelSpec("third", str(smollm2))]
    with pytest.raises(KeyboardInterrupt):
        report.run_side_by_side(models, ["proofkd_legal_mc"], tmp_path / "out", limit=LIMIT, log=lambda line: None)
    table = (tmp_path / "out" / "report.md").read_text()
    assert "interrupted: during second; the models after it did not run" in table
    row = next(line for line in table.splitlines() if line.startswith("| proofkd_legal_mc | acc |"))
    assert row.split("|")[4].strip() != "n/a" and row.split("|")[5].strip() == row.split("|")[6].strip() == "n/a"
