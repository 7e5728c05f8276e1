"""`proofkd quickstart`: the whole Stage-1 chain on the embedded default, on a CPU, offline.

1. materialise the teacher (SmolLM2-135M-Instruct from the packaged GGUF) and
   the student made from it, and generate the STEM data (all cached);
2. measure the student against the teacher on held-out rows;
3. run `axolotl train` on the CPU twin recipe;
4. measure again, and print and save the before/after table.

`proofkd quickstart --opd` does the same for on-policy distillation: it
measures the student's exact reverse KL to the teacher on its own samples for
held-out arithmetic prompts, runs `axolotl train yaml/quickstart/opd.yml`, and
measures again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from proofkd.cli.training_run import TrainingStopped, axolotl_train
from proofkd.core import embedded
from proofkd.core.io import atomic_path, unwritable_reason
from proofkd.core.logs import get_logger
from proofkd.core.recipes import RecipeError, read_recipe

LOG = get_logger("proofkd.quickstart")

# Shipped recipes (`proofkd recipes list`), read from the installed package so
# that the quickstart runs from any folder; a --recipe path replaces them.
DEFAULT_RECIPE = "quickstart/stage1_kd"
OPD_RECIPE = "quickstart/opd"
OPD_HELDOUT = "proofkd:arith-dapo?split=heldout&n=16&seed=0"


def _resolve(value: str) -> Path:
    return embedded.resolve(value) if embedded.is_reference(value) else Path(value)


def _rows(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _measure(student_path: Path, teacher_path: Path, rows: list[dict], sequence_len: int, desc: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from proofkd.plugin.heldout import heldout_metrics

    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32)
    return heldout_metrics(student, teacher, tokenizer, rows, sequence_len=sequence_len, desc=desc)


def format_table(before: dict, after: dict, teacher: dict | None = None) -> str:
    rows = [
        ("KL(teacher \\|\\| student), T=1, nats/token", "kl"),
        ("student CE, all tokens", "ce"),
        ("student CE, derivation tokens", "ce_proof"),
        ("student CE, other tokens", "ce_other"),
    ]
    head = "| held-out metric | before | after |" + (" teacher |" if teacher else "")
    rule = "|---|---:|---:|" + ("---:|" if teacher else "")
    lines = [head, rule]
    for label, key in rows:
        line = f"| {label} | {before[key]:.3f} | {after[key]:.3f} |"
        if teacher:
            line += f" {teacher[key]:.3f} |"
        lines.append(line)
    return "\n".join(lines)


class QuickstartError(ValueError):
    """A quickstart that cannot start (or whose training stopped); the message names the input and the fix."""


def _train(recipe: Path, output: Path, prepared: Path) -> None:
    try:
        axolotl_train(recipe, output, prepared)
    except TrainingStopped as error:
        raise QuickstartError(str(error)) from None


def _check(recipe: str | Path | None, default: str, output_dir: Path, keys: tuple[str, ...]) -> tuple[Path, dict]:
    """The recipe file and its keys (the shipped `default` unless given), once the run can be seen to work.

    Checked before anything is downloaded, measured or trained.
    """
    try:
        path, cfg = read_recipe(recipe if recipe is not None else default)
    except RecipeError as error:
        raise QuickstartError(f"--recipe: {error}") from None
    missing = [key for key in keys if not cfg.get(key)]
    if missing:
        raise QuickstartError(
            f"--recipe {path} has no {', '.join(missing)}, which the quickstart reads; start from the shipped "
            f"recipe (`proofkd recipes copy {default}`) and edit that"
        )
    reason = unwritable_reason(output_dir, option="--output-dir")
    if reason:
        raise QuickstartError(f"--output-dir {output_dir}: {reason}")
    return path, cfg


def _report(summary: dict, table: str, output_dir: Path, trained: Path, heading: str) -> None:
    """Write summary.json and summary.md whole (each under a temporary name first), and print the table."""
    for name, text in (("summary.json", json.dumps(summary, indent=2)), ("summary.md", table)):
        with atomic_path(output_dir / name) as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
    print(f"\n{heading}\n")
    print(table)
    print(f"\nwall time {summary['wall_seconds']:.0f} s; trained student in {trained}; summary in {output_dir}")


def run(recipe: str | Path | None = None, output_dir: Path = Path("outputs/quickstart")) -> dict:
    recipe, cfg = _check(
        recipe, DEFAULT_RECIPE, output_dir, ("base_model", "proofkd_teacher", "datasets", "test_datasets")
    )
    started = time.monotonic()
    LOG.info("step 1/4: materialising the embedded teacher, student and data (cached after the first run)")
    teacher_path = _resolve(cfg["proofkd_teacher"])
    student_path = _resolve(cfg["base_model"])
    heldout = _rows(_resolve(cfg["test_datasets"][0]["path"]))
    _resolve(cfg["datasets"][0]["path"])
    sequence_len = int(cfg.get("sequence_len", 512))

    LOG.info("step 2/4: measuring the student before training on %d held-out rows", len(heldout))
    before = _measure(student_path, teacher_path, heldout, sequence_len, "before")

    trained = output_dir / "student"
    LOG.info("step 3/4: axolotl train %s -> %s", recipe, trained)
    _train(recipe, trained, output_dir / "prepared")

    LOG.info("step 4/4: measuring the trained student on the same rows")
    after = _measure(trained, teacher_path, heldout, sequence_len, "after")
    teacher = _measure(teacher_path, teacher_path, heldout, sequence_len, "teacher")

    summary = {
        "recipe": str(recipe),
        "heldout_rows": len(heldout),
        "heldout_tokens": before["tokens"],
        "before": before,
        "after": after,
        "teacher": teacher,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    _report(
        summary,
        format_table(before, after, teacher),
        output_dir,
        trained,
        "proofkd quickstart: distillation on the embedded default",
    )
    return summary


def _measure_opd(student_path: Path, teacher_path: Path, rows: list[dict], cfg: dict, desc: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from proofkd.plugin.opd.heldout import reverse_kl_on_prompts

    trl = cfg.get("trl") or {}
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32)
    return reverse_kl_on_prompts(
        student,
        teacher,
        tokenizer,
        rows,
        max_new_tokens=int(trl.get("max_completion_length", 48)),
        chat_template_kwargs=trl.get("chat_template_kwargs"),
        desc=desc,
    )


def format_opd_table(before: dict, after: dict) -> str:
    rows = [
        ("exact KL(student \\|\\| teacher) on own samples, nats/token", "reverse_kl", "{:.3f}"),
        ("mean k1 = log p_s - log p_t of sampled tokens", "k1", "{:.3f}"),
        ("mean completion length, tokens", "mean_length", "{:.1f}"),
        ("DAPO reward (+1 right, -1 wrong)", "reward", "{:+.3f}"),
    ]
    lines = ["| held-out metric | before | after |", "|---|---:|---:|"]
    for label, key, fmt in rows:
        lines.append(f"| {label} | {fmt.format(before[key])} | {fmt.format(after[key])} |")
    return "\n".join(lines)


def run_opd(
    recipe: str | Path | None = None, output_dir: Path = Path("outputs/quickstart-opd"), heldout: str = OPD_HELDOUT
) -> dict:
    """On-policy distillation on the embedded default, measured before and after on held-out prompts."""
    recipe, cfg = _check(recipe, OPD_RECIPE, output_dir, ("base_model", "proofkd_teacher", "datasets"))
    started = time.monotonic()
    LOG.info("step 1/4: materialising the embedded teacher, student and prompts (cached after the first run)")
    teacher_path = _resolve(cfg["proofkd_teacher"])
    student_path = _resolve(cfg["base_model"])
    rows = _rows(_resolve(heldout))
    _resolve(cfg["datasets"][0]["path"])

    LOG.info("step 2/4: measuring the student before training on %d held-out prompts", len(rows))
    before = _measure_opd(student_path, teacher_path, rows, cfg, "before")

    trained = output_dir / "student"
    LOG.info("step 3/4: axolotl train %s -> %s", recipe, trained)
    _train(recipe, trained, output_dir / "prepared")

    LOG.info("step 4/4: measuring the trained student on the same prompts")
    after = _measure_opd(trained, teacher_path, rows, cfg, "after")

    summary = {
        "recipe": str(recipe),
        "heldout": heldout,
        "before": before,
        "after": after,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    _report(
        summary,
        format_opd_table(before, after),
        output_dir,
        trained,
        "proofkd quickstart --opd: on-policy distillation on the embedded default",
    )
    return summary
