"""`axolotl train` given what a new user gets wrong, and killed part way: named errors, nothing lost.

The fast tests hold the pieces (the log trimmed on resume, the checkpoint a resume
picks, the config error's lines); the slow ones run the real CLI on the tiny models.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from pydantic import ValidationError

from proofkd.core.run_log import LOG_FILE
from proofkd.plugin.args import CONFIG_REFUSED, config_error_lines
from proofkd.plugin.base import CHECKPOINT_COMPLETE_MARK, report_errors_briefly, skip_incomplete_checkpoint
from proofkd.plugin.schedule import proof_weight_at
from proofkd.plugin.trainer import JsonlLogCallback
from tests.helpers import axolotl_train, read_log, tiny_recipe, train_records, write_stage1_jsonl
from tests.plugin.test_args import validate

STEPS = 4


def write_log(output_dir: Path, steps: list[int]) -> Path:
    path = output_dir / LOG_FILE
    path.write_text("".join(json.dumps({"step": s, "loss": float(s)}) + "\n" for s in steps), encoding="utf-8")
    return path


@pytest.mark.parametrize("resumed_at, kept", [(2, [0, 1, 2]), (0, [0]), (5, [0, 1, 2, 3, 4])])
def test_a_run_starting_at_step_n_drops_the_logged_steps_after_n(tmp_path, resumed_at, kept):
    path = write_log(tmp_path, [0, 1, 2, 3, 4])
    args = SimpleNamespace(output_dir=str(tmp_path))
    state = SimpleNamespace(is_world_process_zero=True, global_step=resumed_at)
    JsonlLogCallback().on_train_begin(args, state, None)
    assert [r["step"] for r in read_log(tmp_path)] == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left beside it


def test_only_the_main_process_trims_the_log(tmp_path):
    write_log(tmp_path, [1, 2, 3])
    state = SimpleNamespace(is_world_process_zero=False, global_step=1)
    JsonlLogCallback().on_train_begin(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3]


def make_checkpoints(output_dir: Path, whole: list[int], cut: list[int]) -> None:
    for step in whole + cut:
        (output_dir / f"checkpoint-{step}").mkdir(parents=True)
    for step in whole:
        (output_dir / f"checkpoint-{step}" / CHECKPOINT_COMPLETE_MARK).write_text("{}")


@pytest.mark.parametrize(
    "whole, cut, resume, auto",
    [
        ([2, 10], [12], "checkpoint-10", True),  # numeric order, not text order
        ([2, 4], [], None, True),  # the newest is whole: Axolotl's own choice stands
        ([], [2], None, False),  # nothing whole: start again rather than fail on the cut one
        ([], [], None, True),
    ],
)
def test_an_automatic_resume_skips_a_checkpoint_cut_short(tmp_path, whole, cut, resume, auto):
    make_checkpoints(tmp_path, whole, cut)
    cfg = {"auto_resume_from_checkpoints": True, "output_dir": str(tmp_path)}
    skip_incomplete_checkpoint(cfg)
    assert cfg.get("resume_from_checkpoint") == (str(tmp_path / resume) if resume else None)
    assert cfg["auto_resume_from_checkpoints"] is auto
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"checkpoint-{s}" for s in whole + cut)


def test_an_explicit_resume_is_left_alone(tmp_path):
    make_checkpoints(tmp_path, [2], [4])
    cfg = {"auto_resume_from_checkpoints": True, "output_dir": str(tmp_path), "resume_from_checkpoint": "x"}
    skip_incomplete_checkpoint(cfg)
    assert cfg["resume_from_checkpoint"] == "x"


def refusal(**overrides) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        validate(**overrides)
    return caught.value


def test_a_refused_config_is_reported_as_its_problems_alone(capsys, monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test
    error = refusal(proofkd_teacher="/no/such/teacher", sample_packing=True)
    lines = config_error_lines(error)
    assert len(lines) == 2
    assert lines[0].startswith("proofkd_teacher: no folder /no/such/teacher exists here")
    assert lines[1].startswith("sample_packing: true is not supported")
    report_errors_briefly()
    sys.excepthook(type(error), error, error.__traceback__)
    err = capsys.readouterr().err
    assert err.splitlines() == [f"{CONFIG_REFUSED}:", *(f"- {line}" for line in lines)]


def test_a_field_bound_is_reported_with_its_key():
    assert config_error_lines(refusal(proofkd_temperature=0)) == [
        "proofkd_temperature must be > 0, got 0; the published recipe uses 2.0"
    ]


def test_other_errors_keep_their_traceback():
    assert config_error_lines(RuntimeError("boom")) is None
    assert config_error_lines(refusal(micro_batch_size="many")) is None  # Axolotl's own key: its own report


@pytest.mark.parametrize(
    "teacher, message",
    [
        ("/no/such/teacher", "proofkd_teacher: no folder /no/such/teacher exists here, and it is not a Hub id"),
        ("./teacher", "proofkd_teacher: no folder ./teacher exists here"),
        ("{tmp}", "has no config.json, so it is not a saved model"),
        ("{tmp}/notes.txt", "is a file; name the model's folder"),
    ],
)
def test_a_teacher_path_that_holds_no_model_is_refused_at_validation(tmp_path, teacher, message):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValidationError, match=message.replace("{tmp}", str(tmp_path))):
        validate(proofkd_teacher=teacher.format(tmp=tmp_path))


def test_a_hub_id_or_a_served_teacher_is_not_checked_as_a_path():
    assert validate(proofkd_teacher="org/teacher").proofkd_teacher == "org/teacher"
    served = validate(proofkd_teacher="/served/tokenizer", proofkd_teacher_server="http://localhost:1/v1")
    assert served.proofkd_teacher_server


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_cuda_teacher_on_a_machine_without_cuda_is_refused_at_validation(device):
    with pytest.raises(ValidationError, match=f"proofkd_teacher_device: {device} needs CUDA, which this machine"):
        validate(proofkd_teacher_device=device)


# --- the real CLI ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_missing_teacher_path_stops_the_cli_before_any_data_or_model(tiny, tmp_path):
    cfg = tiny_recipe(tmp_path, student=tiny["student"], teacher=tmp_path / "teacher", train_file=tiny["train"])
    code, output = axolotl_train(cfg, tmp_path)
    assert code != 0
    assert f"- proofkd_teacher: no folder {tmp_path / 'teacher'} exists here" in output
    assert "Traceback" not in output  # the problems alone, not pydantic's trace
    assert not (tmp_path / "prepared").exists()  # stopped before tokenisation


@pytest.mark.slow
def test_rows_without_a_derivation_are_warned_about_and_log_no_nan(tiny, tmp_path):
    rows = [json.loads(line) | {"CoT": ""} for line in tiny["train"].read_text().splitlines()]
    train = write_stage1_jsonl(tmp_path / "no_derivations.jsonl", rows)
    cfg = tiny_recipe(tmp_path, student=tiny["student"], teacher=tiny["teacher"], train_file=train, max_steps=1)
    code, output = axolotl_train(cfg, tmp_path)
    assert code == 0, output[-4000:]
    assert "none of the 48 train rows has a derivation between 'Proof:' and 'Final Answer:'" in output
    [record] = train_records(tmp_path / "out")
    assert "proofkd/ce_proof" not in record and record["proofkd/proof_token_frac"] == 0
    assert "nan" not in (tmp_path / "out" / LOG_FILE).read_text()


def kill_when_logged(command: list[str], workdir: Path, env: dict, step: int, timeout: float = 600) -> None:
    """Start `command` and SIGKILL its whole process group once the log holds a training record of `step`."""
    log = workdir / "out" / LOG_FILE
    process = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if log.is_file() and any(r.get("step") == step and "loss" in r for r in read_log(log.parent)):
                os.killpg(process.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        assert process.wait(timeout=60) == -signal.SIGKILL, f"the run ended before step {step} was logged"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_run_killed_twice_resumes_to_the_uninterrupted_runs_steps(tiny, tmp_path_factory, seed):
    """SIGKILL at two random steps, each rerun resuming by itself: every later step's loss, learning rate and
    proof weight are the uninterrupted run's, and the log holds each step once."""
    keys = {
        "max_steps": STEPS,
        "save_strategy": "steps",
        "save_steps": 1,
        "lr_scheduler": "cosine",
        "learning_rate": 0.5,
        "auto_resume_from_checkpoints": True,
    }

    def recipe(name):
        workdir = tmp_path_factory.mktemp(name)
        cfg = tiny_recipe(workdir, student=tiny["student"], teacher=tiny["teacher"], train_file=tiny["train"], **keys)
        (workdir / "recipe.yml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
        return workdir

    reference_dir = recipe("uninterrupted")
    code, output = axolotl_train(reference_dir / "recipe.yml", reference_dir)
    assert code == 0, output[-4000:]
    reference = train_records(reference_dir / "out")

    workdir = recipe("killed")
    env = dict(
        os.environ, AXOLOTL_DO_NOT_TRACK="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    command = [sys.executable, "-m", "axolotl.cli.main", "train", "recipe.yml", "--launcher", "python"]
    for step in sorted(random.Random(seed).sample(range(1, STEPS), 2)):
        kill_when_logged(command, workdir, env, step)
    code, output = axolotl_train(workdir / "recipe.yml", workdir)
    assert code == 0, output[-4000:]

    records = train_records(workdir / "out")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for got, want in zip(records, reference, strict=True):
        assert got["proofkd/proof_weight"] == pytest.approx(proof_weight_at(got["step"] - 1, STEPS, 2.5, 1.5))
        for key in ("loss", "grad_norm", "learning_rate", "proofkd/proof_weight", "proofkd/kl"):
            assert math.isclose(got[key], want[key], rel_tol=1e-5), (got["step"], key, got[key], want[key])
