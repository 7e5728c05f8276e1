"""`axolotl train` with the plugin, end to end on tiny models (each run is a real CLI process).

The base run takes 4 optimizer steps of 4 rows (micro-batch 2 x accumulation 2),
evaluates before and after, and saves a checkpoint at step 2. The other runs
are compared with it step by step.
"""

from __future__ import annotations

import math
import os
import random
import string

import pytest

from proofkd.plugin.schedule import proof_weight_at
from tests.helpers import axolotl_train, read_log, tiny_recipe, train_records

pytestmark = pytest.mark.slow

STEPS = 4
PLANTED_TOKEN = "hf_" + "".join(random.SystemRandom().choices(string.ascii_letters, k=34))


def run_ok(config, workdir, *args, processes=1):
    code, output = axolotl_train(config, workdir, *args, processes=processes)
    assert code == 0, output[-6000:]
    return output


@pytest.fixture(scope="module")
def base(tiny, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("base")
    cfg = tiny_recipe(
        workdir,
        student=tiny["student"],
        teacher=tiny["teacher"],
        train_file=tiny["train"],
        eval_file=tiny["heldout"],
        max_steps=STEPS,
        eval_steps=STEPS,
        save_strategy="steps",
        save_steps=2,
    )
    # A Hub token where a user keeps one: no output or file of the run may hold it (the run is offline).
    os.environ["HF_TOKEN"] = PLANTED_TOKEN
    try:
        output = run_ok(cfg, workdir)
    finally:
        os.environ.pop("HF_TOKEN")
    return {"workdir": workdir, "cfg": cfg, "output": output, "records": train_records(workdir / "out")}


def test_the_hub_token_is_in_no_output_and_no_file_of_a_run(base):
    assert PLANTED_TOKEN not in base["output"]
    files = [path for path in base["workdir"].rglob("*") if path.is_file()]
    assert any(path.suffix == ".safetensors" for path in files)  # the checkpoint and the student are searched too
    holding = [path for path in files if PLANTED_TOKEN.encode() in path.read_bytes()]
    assert not holding


def variant(tiny, tmp_path_factory, name, processes=1, **overrides):
    """A run with the base's step count (the proof weight schedule depends on it), changed by `overrides`."""
    workdir = tmp_path_factory.mktemp(name)
    overrides.setdefault("max_steps", STEPS)
    cfg = tiny_recipe(workdir, student=tiny["student"], teacher=tiny["teacher"], train_file=tiny["train"], **overrides)
    output = run_ok(cfg, workdir, processes=processes)
    return train_records(workdir / "out"), output


def assert_same_steps(records, reference, steps, rel=1e-5):
    for step in steps:
        got = next(r for r in records if r["step"] == step)
        want = next(r for r in reference if r["step"] == step)
        for key in ("loss", "grad_norm", "proofkd/tokens", "proofkd/kl", "proofkd/ce_weighted"):
            assert math.isclose(got[key], want[key], rel_tol=rel), (step, key, got[key], want[key])


def test_the_logged_loss_is_the_plugins_formula(base):
    assert [r["step"] for r in base["records"]] == list(range(1, STEPS + 1))
    for record in base["records"]:
        formula = 0.55 * record["proofkd/ce_weighted"] + 0.45 * record["proofkd/kd_term"]
        assert math.isclose(record["loss"], formula, rel_tol=1e-5), record
        assert math.isclose(record["proofkd/kd_term"], 4.0 * record["proofkd/kl"], rel_tol=1e-9)
        assert 0 < record["proofkd/proof_token_frac"] < 1


def test_each_span_is_logged_in_training_and_evaluation_and_adds_up(base):
    """Stage 1 trains every token of a row, so each step logs its prompt, derivation and answer, never NaN."""
    evals = [r for r in read_log(base["workdir"] / "out") if "eval_loss" in r]
    for prefix, record in [("proofkd/", r) for r in base["records"]] + [("eval_proofkd/", e) for e in evals]:
        spans = [prefix + "prompt/", prefix + "derivation/", prefix + "answer/"]
        for span in spans:
            for metric in ("ce", "kl", "student_entropy", "teacher_entropy", "topk_overlap"):
                assert math.isfinite(record[span + metric]), (span, metric)
            assert 0 <= record[span + "topk_overlap"] <= 1 + 1e-6
        assert sum(record[span + "tokens"] for span in spans) == record[prefix + "tokens"]
        weighted_ce = sum(record[span + "ce"] * record[span + "tokens"] for span in spans)
        assert math.isclose(weighted_ce / record[prefix + "tokens"], record[prefix + "ce"], rel_tol=1e-6)
        assert math.isclose(record[prefix + "derivation/ce"], record[prefix + "ce_proof"], rel_tol=1e-6)


def test_training_reduced_the_loss_and_the_kl(base):
    evals = [r for r in read_log(base["workdir"] / "out") if "eval_loss" in r]
    assert [e["step"] for e in evals] == [0, STEPS]
    before, after = evals
    assert after["eval_loss"] < before["eval_loss"]
    assert after["eval_proofkd/kl"] < before["eval_proofkd/kl"]
    assert base["records"][-1]["loss"] < base["records"][0]["loss"]


def test_proof_weight_follows_the_linear_schedule(base):
    logged = [r["proofkd/proof_weight"] for r in base["records"]]
    expected = [proof_weight_at(step, STEPS, 2.5, 1.5) for step in range(STEPS)]
    assert logged == pytest.approx(expected, abs=1e-12)
    assert logged[0] == 2.5 and logged[-1] == 1.5


def test_span_statuses_and_teacher_are_reported(base):
    assert "proofkd train rows: 48 with the whole derivation, 0 with it cut by sequence_len" in base["output"]
    assert "loading teacher" in base["output"]


def test_a_step_is_the_same_however_it_is_split(tiny, tmp_path_factory, base):
    """micro-batch 4 x accumulation 1 == micro-batch 2 x accumulation 2: normalisation is per optimizer step."""
    records, _ = variant(tiny, tmp_path_factory, "mb4", micro_batch_size=4, gradient_accumulation_steps=1)
    assert_same_steps(records, base["records"], steps=range(1, STEPS + 1))


def test_two_gloo_ranks_train_the_same_step(tiny, tmp_path_factory, base):
    """2 processes x micro-batch 1 x accumulation 2 see the same rows per step as the base run."""
    records, output = variant(
        tiny, tmp_path_factory, "ddp", processes=2, micro_batch_size=1, gradient_accumulation_steps=2
    )
    assert "rank 1 of 2 joined a gloo process group" in output
    assert_same_steps(records, base["records"], steps=range(1, STEPS + 1))


def test_resumed_run_continues_the_schedule_and_the_losses(tiny, tmp_path_factory, base):
    checkpoint = base["workdir"] / "out" / "checkpoint-2"
    assert checkpoint.is_dir()
    records, _ = variant(
        tiny,
        tmp_path_factory,
        "resume",
        resume_from_checkpoint=str(checkpoint),
    )
    assert [r["step"] for r in records] == [3, 4]
    assert [r["proofkd/proof_weight"] for r in records] == pytest.approx(
        [proof_weight_at(s, STEPS, 2.5, 1.5) for s in (2, 3)], abs=1e-12
    )
    assert_same_steps(records, base["records"], steps=[3, 4])


def test_gradient_checkpointing_and_profiling_give_the_same_step(tiny, tmp_path_factory, base):
    records, _ = variant(tiny, tmp_path_factory, "ckpt", gradient_checkpointing=True, proofkd_profile=True)
    assert_same_steps(records, base["records"], steps=range(1, STEPS + 1))
    for record in records:
        seconds = {k.split("/")[-1]: v for k, v in record.items() if k.startswith("proofkd/seconds/")}
        peaks = {k.split("/")[-1]: v for k, v in record.items() if k.startswith("proofkd/peak_gib/")}
        parts = {"teacher_forward", "student_forward", "loss_head", "micro_step", "optimizer_step"}
        assert set(seconds) == set(peaks) == parts, record
        # the loss head runs inside the student's forward, and both inside the micro-steps
        assert seconds["micro_step"] > seconds["teacher_forward"] + seconds["student_forward"] > seconds["loss_head"]
        assert peaks["micro_step"] >= peaks["student_forward"] >= peaks["loss_head"] > 0
    assert not any("seconds/" in k for r in base["records"] for k in r)  # off by default


def served_variant(tiny, tmp_path_factory, name, topk=None, script=(), run=None, **keys):
    """A base-like run whose teacher is the tiny teacher behind a local vLLM-style server, asked for its top-k
    (default: as wide as the vocabulary), its requests answered as `script` says (see `FakeVLLM`). Returns what
    `run` (default `variant`) returns, and the number of requests served."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.fake_vllm import MODEL_NAME, FakeVLLM

    model = AutoModelForCausalLM.from_pretrained(tiny["teacher"], dtype=torch.float32).eval()
    with FakeVLLM(model) as server:
        server.script = list(script)
        result = (run or variant)(
            tiny,
            tmp_path_factory,
            name,
            proofkd_teacher_server=server.url,
            proofkd_teacher_server_model=MODEL_NAME,
            proofkd_teacher_topk=topk or model.lm_head.weight.shape[0],
            **keys,
        )
        return result, len(server.requests)


def test_a_teacher_server_serving_its_whole_distribution_gives_the_same_steps(tiny, tmp_path_factory, base):
    """The teacher behind a local vLLM-style server, asked for a top-k as wide as the vocabulary: the
    top-k KL is then the full KL, so every step matches the in-process teacher's."""
    (records, output), served = served_variant(tiny, tmp_path_factory, "server")
    assert "teacher served at" in output
    assert served >= STEPS * 2  # one request per micro-batch at least
    assert_same_steps(records, base["records"], steps=range(1, STEPS + 1), rel=1e-4)


def test_a_faulty_teacher_server_gives_the_same_steps_and_counts_its_retries(tiny, tmp_path_factory, base):
    """Dropped connections, a stall past the timeout, 5xx and answers cut short, each followed by a retry (two
    in a row once): training ends with the in-process teacher's steps, and the log counts every failed attempt."""
    faults = ["drop", 503, ("sleep", 10.0), "malformed", 502, "drop", "no-logprobs"]
    script = ["ok", faults[0], "ok", faults[1], "ok", faults[2], "ok", faults[3], faults[4], "ok", "ok"]
    script += [faults[5], "ok", faults[6], "ok"]
    (records, output), served = served_variant(
        tiny, tmp_path_factory, "server-faults", script=script, proofkd_teacher_server_timeout=7.0
    )
    assert served >= STEPS * 2 + len(faults)
    assert output.count("attempt 1 failed") == 6 and output.count("attempt 2 failed") == 1
    assert_same_steps(records, base["records"], steps=range(1, STEPS + 1), rel=1e-4)
    assert records[-1]["proofkd/teacher_server_retries"] == len(faults)


def run_failing(tiny, tmp_path_factory, name, **overrides):
    workdir = tmp_path_factory.mktemp(name)
    cfg = tiny_recipe(workdir, student=tiny["student"], teacher=tiny["teacher"], train_file=tiny["train"], **overrides)
    code, output = axolotl_train(cfg, workdir)
    return workdir / "out", code, output


def test_a_teacher_server_that_stays_down_stops_the_run_naming_it_with_the_checkpoint_whole(tiny, tmp_path_factory):
    """Two steps answered (one request per micro-batch), then only 503s."""
    (out, code, output), _ = served_variant(
        tiny,
        tmp_path_factory,
        "server-down",
        script=["ok"] * 4 + [503] * 50,
        run=run_failing,
        max_steps=STEPS,
        save_strategy="steps",
        save_steps=1,
        proofkd_teacher_server_retries=2,
    )
    assert code != 0
    assert "proofkd stopped the run: teacher server http://127.0.0.1:" in output
    assert "did not answer usefully in 2 attempts" in output and "HTTP 503" in output
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert [r["step"] for r in train_records(out)] == [1, 2]


@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
def test_a_narrow_teacher_server_top_k_still_trains(tiny, tmp_path_factory, tail):
    (records, _), _ = served_variant(
        tiny, tmp_path_factory, f"server-top8-{tail}", topk=8, proofkd_teacher_topk_tail=tail
    )
    assert all(math.isfinite(r["proofkd/kl"]) and r["proofkd/kl"] >= 0 for r in records)
    assert all(0 < r["proofkd/teacher_tail_mass"] < 1 for r in records)
    assert records[-1]["loss"] < records[0]["loss"]


def test_teacher_from_another_family_is_refused_before_training(tiny, smollm2, tmp_path):
    cfg = tiny_recipe(tmp_path, student=tiny["student"], teacher=smollm2, train_file=tiny["train"])
    code, output = axolotl_train(cfg, tmp_path)
    assert code != 0
    assert "teacher and student tokenizers differ" in output
    assert "Starting trainer" not in output


def teacher_cache(cfg: dict, workdir, *args: str) -> str:
    """`proofkd teacher cache` on the recipe `cfg`, as a user runs it; its output."""
    import os
    import subprocess
    import sys

    import yaml

    recipe = workdir / "cache-recipe.yml"
    recipe.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    command = [sys.executable, "-m", "proofkd.cli", "teacher", "cache", str(recipe), *args]
    done = subprocess.run(command, cwd=workdir, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    return output


@pytest.fixture(scope="module")
def cached(tiny, tmp_path_factory):
    """A teacher cache as wide as the vocabulary, in float32, built from a copy of the teacher that is then
    deleted: the runs that read it cannot load a teacher."""
    import shutil

    workdir = tmp_path_factory.mktemp("cache")
    teacher = shutil.copytree(tiny["teacher"], workdir / "teacher")
    cfg = tiny_recipe(
        workdir,
        student=tiny["student"],
        teacher=teacher,
        train_file=tiny["train"],
        eval_file=tiny["heldout"],
        max_steps=STEPS,
        eval_steps=STEPS,
        proofkd_teacher_cache=str(workdir / "cache"),
        proofkd_teacher_topk=640,  # every vocabulary row: the top-k KL is the full KL
    )
    output = teacher_cache(cfg, workdir, "--logprob-dtype", "float32", "--rows-per-shard", "20")
    shutil.rmtree(teacher)
    return {"workdir": workdir, "cfg": cfg, "output": output}


def test_a_full_width_teacher_cache_gives_the_in_process_teachers_steps(cached, base):
    assert "teacher cache" in cached["output"] and "56 rows, top-640 in float32" in cached["output"]
    output = run_ok(cached["cfg"], cached["workdir"])
    assert "teacher read from the cache" in output and "loading teacher" not in output
    assert_same_steps(train_records(cached["workdir"] / "out"), base["records"], steps=range(1, STEPS + 1), rel=1e-4)
    evals = [r for r in read_log(cached["workdir"] / "out") if "eval_proofkd/kl" in r]
    assert evals and all(math.isfinite(r["eval_proofkd/kl"]) for r in evals)


def test_a_second_student_of_another_depth_trains_from_the_same_cache(cached, tiny, tmp_path_factory):
    from tests.helpers import make_model

    workdir = tmp_path_factory.mktemp("cache-second")
    student = make_model(workdir / "student", tiny["tokenizer"], hidden=32, layers=3, seed=6)
    cfg = dict(cached["cfg"], base_model=str(student), output_dir=str(workdir / "out"))
    output = run_ok(cfg, workdir)
    assert "teacher read from the cache" in output and "loading teacher" not in output
    records = train_records(workdir / "out")
    assert len(records) == STEPS and records[-1]["proofkd/kl"] < records[0]["proofkd/kl"]


def test_a_cache_built_through_the_teacher_server_gives_the_served_runs_steps(tiny, tmp_path_factory):
    """Top-8 with the tail bucket, log-probs stored in float16: the same steps as the live server within
    float16's rounding."""

    def run_from_cache(tiny, tmp_path_factory, name, **keys):
        workdir = tmp_path_factory.mktemp(name)
        cfg = tiny_recipe(
            workdir,
            student=tiny["student"],
            teacher=tiny["teacher"],
            train_file=tiny["train"],
            max_steps=STEPS,
            proofkd_teacher_cache=str(workdir / "cache"),
            **keys,
        )
        teacher_cache(cfg, workdir)
        output = run_ok(cfg, workdir)  # the same recipe: the cache comes before the server
        assert "teacher read from the cache" in output
        return train_records(workdir / "out")

    (served, _), _ = served_variant(tiny, tmp_path_factory, "served-top8", topk=8)
    cache_records, _ = served_variant(tiny, tmp_path_factory, "cache-top8", topk=8, run=run_from_cache)
    assert_same_steps(cache_records, served, steps=range(1, STEPS + 1), rel=2e-3)
