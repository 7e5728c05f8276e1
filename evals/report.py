"""Side-by-side evaluation: several models, the same lm-eval tasks, one table and one chart.

`proofkd eval` compares, say, a teacher with a student before and after
distillation. Each model is given as `NAME=SPEC` (see `proofkd.evals.models`:
an HF checkpoint folder, a `proofkd:` reference, or a `.gguf` file). Every
spec and task name is checked, and every task's data loaded, before the first
model runs, so a typo or missing data in the last one fails at once rather
than after an hour.

For each model, `lm_eval.simple_evaluate` runs with the proofkd tasks on its
include path and sample logging on; `EvaluationTracker` saves the results and
the per-sample logs under `OUT/<NAME>/`. Then `OUT/report.md` gets a table
(one row per task and metric, one column per model), `OUT/report.png` a
grouped bar chart of the metrics that are fractions, and `OUT/report.json`
the same numbers for scripts.
"""

from __future__ import annotations

import difflib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from proofkd.core.io import atomic_path
from proofkd.core.logs import get_logger
from proofkd.evals import TASKS_DIR
from proofkd.evals.models import EvalSetupError, ModelSpec, ModelSpecError, is_gguf, model_args

LOG = get_logger(__name__)


class ModelRunError(RuntimeError):
    """One or more models failed while the others ran; the report holds the others."""


class UnknownTaskError(EvalSetupError):
    """A task name that neither lm-eval nor the include path knows."""


@dataclass
class MetricRow:
    """One line of the report: a task's metric for every model (None where a model lacks it)."""

    task: str
    metric: str
    is_group: bool
    samples: int | None
    values: dict[str, float | None] = field(default_factory=dict)
    stderrs: dict[str, float | None] = field(default_factory=dict)


def task_manager(include_path: str | Path | None = None, data_dir: str | Path | None = None):
    """lm-eval's TaskManager with the proofkd tasks (or `include_path`) indexed beside the built-in ones."""
    from lm_eval.tasks import TaskManager

    folder = Path(include_path or TASKS_DIR).expanduser().resolve()
    if not folder.is_dir():
        raise EvalSetupError(f"task folder {folder} does not exist; --include-path must name a folder of task YAMLs")
    metadata = {"data_dir": str(Path(data_dir).expanduser().resolve())} if data_dir else None
    return TaskManager(include_path=str(folder), metadata=metadata)


def check_task_names(names: list[str], manager) -> None:
    """Raise UnknownTaskError naming each unknown task and the known names closest to it."""
    known = manager.all_tasks
    problems = []
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
            hint = f"close names: {', '.join(close)}" if close else "no close names"
            problems.append(f"{name!r} ({hint})")
    if problems:
        raise UnknownTaskError(
            f"unknown task {'; '.join(problems)}. Tasks come from lm-eval and from {manager.include_path}; "
            f"`lm-eval ls tasks --include_path {manager.include_path}` lists them"
        )


def check_tasks_load(names: list[str], manager) -> None:
    """Load every task's documents once, so missing data fails before any model loads, naming the task.

    A held-out task without its built split raises MissingEvalSplitError (it says how to build it); any other
    failure, such as a Hub dataset with no network or a task whose extra dependency is missing, becomes an
    EvalSetupError that names the task and keeps lm-eval's message.
    """
    from lm_eval.tasks import get_task_dict

    from proofkd.evals.data import MissingEvalSplitError

    for name in names:
        try:
            get_task_dict([name], manager)
        except MissingEvalSplitError:
            raise
        except Exception as error:
            raise EvalSetupError(
                f"task {name!r} could not load: {type(error).__name__}: {error}. Tasks whose data is on the Hugging "
                f"Face Hub need the network (unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE); leave them out of --tasks "
                f"to run the offline ones"
            ) from error


def _default_dtype(device: str) -> str:
    # float32 on a CPU: half precision there is slow or unsupported, and scores should not depend on it.
    return "float32" if device.startswith("cpu") else "auto"


def _evaluate_and_save(lm, args: dict[str, str], tasks: list[str], manager, model_dir: Path, **options) -> dict:
    """One `simple_evaluate` call on a loaded model; its results and sample logs are saved in `model_dir`."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker

    # A path ending in .json makes the tracker write results_<date>.json and samples_<task>_<date>.jsonl beside it,
    # instead of in a subfolder named after the checkpoint path.
    tracker = EvaluationTracker(output_path=str(model_dir / "results.json"))
    results = lm_eval.simple_evaluate(
        model=lm,
        model_args=args,
        tasks=tasks,
        task_manager=manager,
        log_samples=True,
        evaluation_tracker=tracker,
        **options,
    )
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results["configs"]:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    if not (model_dir / f"results_{tracker.date_id}.json").is_file():
        raise OSError(f"lm-eval did not write its results under {model_dir}; see its log above")
    return results


def merge_results(parts: list[dict]) -> dict:
    """The parts of `results` the report reads, merged over several lm-eval runs of one model."""
    merged: dict[str, dict] = {"results": {}, "group_subtasks": {}, "n-samples": {}}
    for part in parts:
        for key, value in merged.items():
            value.update(part.get(key, {}))
    return merged


def evaluate_model(
    spec: ModelSpec,
    args: dict[str, str],
    tasks: list[str],
    manager,
    out_dir: Path,
    *,
    chat_template_tasks: list[str] | None = None,
    limit: int | float | None = None,
    device: str = "cpu",
    batch_size: int | str = 1,
    gen_kwargs: dict | None = None,
) -> dict:
    """Run lm-eval for one model, save its results and sample logs under `out_dir/<name>/`, return the results.

    The tasks in `chat_template_tasks` run in a second pass with the model's chat template, on the same loaded model.
    """
    from lm_eval.api.registry import get_model

    if is_gguf(spec):
        from proofkd.evals.llama_cpp_lm import LlamaCppLM

        lm = LlamaCppLM.create_from_arg_obj(args)
    else:
        lm = get_model("hf").create_from_arg_obj(args, {"device": device, "batch_size": batch_size})
    options = {"limit": limit, "device": device, "batch_size": batch_size, "gen_kwargs": gen_kwargs or None}
    templated = list(chat_template_tasks or [])
    passes = [([t for t in tasks if t not in templated], False), (templated, True)]
    parts = [
        _evaluate_and_save(lm, args, subset, manager, out_dir / spec.name, apply_chat_template=template, **options)
        for subset, template in passes
        if subset
    ]
    return merge_results(parts)


def metric_rows(results_by_model: dict[str, dict]) -> list[MetricRow]:
    """The report's rows, in lm-eval's order (each group before its tasks), over every model's results."""
    rows: dict[tuple[str, str], MetricRow] = {}
    for model, results in results_by_model.items():
        # lm-eval lists standalone tasks in group_subtasks too, with no subtasks.
        groups = {name for name, subtasks in results.get("group_subtasks", {}).items() if subtasks}
        for task, metrics in results["results"].items():
            samples = results.get("n-samples", {}).get(task, {}).get("effective")
            for key, value in metrics.items():
                metric, _, filter_name = key.partition(",")
                if key == "alias" or metric.endswith("_stderr"):
                    continue
                label = metric if filter_name in ("", "none") else f"{metric} ({filter_name})"
                row = rows.setdefault((task, label), MetricRow(task, label, task in groups, samples))
                row.values[model] = _number(value)
                row.stderrs[model] = _number(metrics.get(f"{metric}_stderr,{filter_name}"))
    return list(rows.values())


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not math.isnan(value) else None


def _cell(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"
    return f"{text} ± {stderr:.3f}" if stderr else text


def render_markdown(rows: list[MetricRow], models: list[ModelSpec], settings: dict[str, str]) -> str:
    """The Markdown report: the models, the run's settings, and the table."""
    lines = ["# Side-by-side evaluation", "", "| model | spec |", "|---|---|"]
    lines += [f"| {m.name} | `{m.location}`{f' (tokenizer `{m.tokenizer}`)' if m.tokenizer else ''} |" for m in models]
    lines += ["", ", ".join(f"{key}: {value}" for key, value in settings.items()), ""]
    lines += ["| task | metric | n | " + " | ".join(m.name for m in models) + " |"]
    lines += ["|---|---|---:|" + "---:|" * len(models)]
    for row in rows:
        task = f"**{row.task}** (group)" if row.is_group else row.task
        cells = [_cell(row.values.get(m.name), row.stderrs.get(m.name)) for m in models]
        lines.append(
            f"| {task} | {row.metric} | {row.samples if row.samples is not None else ''} | {' | '.join(cells)} |"
        )
    lines += [
        "",
        "Values are means over the task's samples, ± their standard error.",
        "Groups average their tasks weighted by size.",
        "The chart (report.png) shows the task metrics that are fractions; derivation_words is a length, in words.",
        "Per-model results and sample logs are in the folder named after each model.",
    ]
    return "\n".join(lines) + "\n"


def plotted_rows(rows: list[MetricRow]) -> list[MetricRow]:
    """The task rows whose values are all fractions (counts and lengths would flatten the chart)."""
    return [
        row
        for row in rows
        if not row.is_group
        and any(v is not None for v in row.values.values())
        and all(0.0 <= v <= 1.0 for v in row.values.values() if v is not None)
    ]


def write_chart(rows: list[MetricRow], models: list[ModelSpec], path: Path) -> Path:
    """A grouped bar chart, one group per task metric and one bar per model, saved as PNG."""
    from matplotlib.figure import Figure

    shown = plotted_rows(rows)
    width = 0.8 / max(len(models), 1)
    figure = Figure(figsize=(max(6.0, 1.1 * len(shown) + 2), 4.8), layout="constrained")
    axes = figure.add_subplot()
    for i, model in enumerate(models):
        heights = [row.values.get(model.name) or 0.0 for row in shown]
        positions = [x + (i - (len(models) - 1) / 2) * width for x in range(len(shown))]
        axes.bar(positions, heights, width=width, label=model.name)
    axes.set_xticks(
        range(len(shown)), [f"{row.task}\n{row.metric}" for row in shown], rotation=30, ha="right", fontsize=8
    )
    axes.set_ylim(0, 1)
    axes.set_ylabel("score")
    axes.set_title("proofkd side-by-side evaluation")
    axes.legend()
    with atomic_path(path) as tmp:
        # The temporary name hides the extension, so the format is named.
        figure.savefig(tmp, format="png", dpi=120)
    return path


def _report_json(rows: list[MetricRow], models: list[ModelSpec], settings: dict[str, str]) -> str:
    payload = {
        "models": {m.name: {"spec": m.location, "tokenizer": m.tokenizer} for m in models},
        "settings": settings,
        "rows": [
            {
                "task": r.task,
                "metric": r.metric,
                "group": r.is_group,
                "n": r.samples,
                "values": r.values,
                "stderr": r.stderrs,
            }
            for r in rows
        ],
    }
    return json.dumps(payload, indent=2) + "\n"


def write_report(
    results_by_model: dict[str, dict], models: list[ModelSpec], out_dir: Path, settings: dict[str, str]
) -> list[Path]:
    """Write report.md, report.png and report.json under `out_dir`; return their paths."""
    rows = metric_rows(results_by_model)
    markdown, chart, numbers = out_dir / "report.md", out_dir / "report.png", out_dir / "report.json"
    _write_text(markdown, render_markdown(rows, models, settings))
    _write_text(numbers, _report_json(rows, models, settings))
    write_chart(rows, models, chart)
    return [markdown, chart, numbers]


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _chat_template_tasks(apply_chat_template: bool | list[str], tasks: list[str]) -> list[str]:
    if apply_chat_template is True:
        return list(tasks)
    chosen = list(apply_chat_template or [])
    stray = [name for name in chosen if name not in tasks]
    if stray:
        raise EvalSetupError(f"chat template asked for {stray}, which are not among the tasks {tasks}")
    return chosen


def run_side_by_side(
    models: list[ModelSpec],
    tasks: list[str],
    out_dir: str | Path,
    *,
    include_path: str | Path | None = None,
    data_dir: str | Path | None = None,
    limit: int | float | None = None,
    device: str = "cpu",
    batch_size: int | str = 1,
    max_gen_toks: int | None = None,
    dtype: str | None = None,
    apply_chat_template: bool | list[str] = False,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Evaluate every model on `tasks` and write the report; return the report's paths.

    `apply_chat_template` is True (every task), False, or the names of the tasks that need it (e.g. DAPO-style
    math for a chat model, while the Stage-1 and Stage-2 formats are plain text). `threads` sets torch's CPU threads.
    """
    if not models:
        raise ModelSpecError("give at least one --model NAME=SPEC")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ModelSpecError(f"model names must differ, got {names}")
    dtype = dtype or _default_dtype(device)
    all_args = {m.name: model_args(m, dtype) for m in models}
    chat_template_tasks = _chat_template_tasks(apply_chat_template, tasks)
    manager = task_manager(include_path, data_dir)
    check_task_names(tasks, manager)
    check_tasks_load(tasks, manager)
    if threads:
        import torch

        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    gen_kwargs = {"max_gen_toks": max_gen_toks} if max_gen_toks else None
    settings = {
        "tasks": ",".join(tasks),
        "limit": str(limit) if limit is not None else "none",
        "max_gen_toks": str(max_gen_toks) if max_gen_toks else "task default",
        "chat template": ",".join(chat_template_tasks) or "none",
        "device": device,
        "dtype": dtype,
        "batch size": str(batch_size),
        "threads": str(threads) if threads else "torch default",
    }
    results: dict[str, dict] = {}
    failures: dict[str, str] = {}
    for i, model in enumerate(models, 1):
        log(f"[{i}/{len(models)}] {model.name}: evaluating {all_args[model.name]['pretrained']} on {', '.join(tasks)}")
        started = time.monotonic()
        try:
            results[model.name] = evaluate_model(
                model,
                all_args[model.name],
                tasks,
                manager,
                out_dir,
                limit=limit,
                device=device,
                batch_size=batch_size,
                gen_kwargs=gen_kwargs,
                chat_template_tasks=chat_template_tasks,
            )
        except KeyboardInterrupt:
            # Stopped by the user: the models that finished keep their report.
            settings["interrupted"] = f"during {model.name}; the models after it did not run"
            paths = write_report(results, models, out_dir, settings)
            log(f"[{i}/{len(models)}] {model.name}: interrupted; the report of the models before it is in {paths[0]}")
            raise
        except Exception as error:  # one model's failure must not cost the others' results
            LOG.exception("model %s failed", model.name)
            failures[model.name] = f"{type(error).__name__}: {error}"
            log(f"[{i}/{len(models)}] {model.name}: FAILED ({failures[model.name]}); going on with the others")
            continue
        elapsed = time.monotonic() - started
        log(f"[{i}/{len(models)}] {model.name}: done in {elapsed:.0f} s, logs in {out_dir / model.name}")
    if failures:
        settings["failed"] = "; ".join(f"{name} ({reason})" for name, reason in failures.items())
    paths = write_report(results, models, out_dir, settings)
    log(f"report: {paths[0]} and {paths[1]}")
    if failures:
        raise ModelRunError(
            f"{', '.join(failures)} failed (the traceback is above; their cells read n/a); "
            f"the report of the others is in {paths[0]}"
        )
    return paths
