"""`proofkd rehearse RECIPE`: a published recipe through `axolotl train` at real width, on a CPU, offline.

The recipes name Hub models and datasets that a machine without the network
cannot fetch, and bf16 and vLLM that a CPU does not run well or at all. A
rehearsal changes exactly those, and nothing else, so that every other value
of the card goes through Axolotl and the plugin as it would on a GPU:

- each Hub model becomes its real-width slice (`proofkd:qwen3-*-slice`:
  the published configuration but depth, random weights, the real tokenizer);
  a local `base_model` (Stage 2 starts from Stage 1's output) becomes the
  Stage-1 student's slice;
- the data becomes a few generated rows in the recipe's own format (STEM
  derivations, legal instructions, DAPO prompts);
- the run stops after `--steps` optimizer steps, logs each one, and trains
  in float32;
- on the GRPO path, sampling runs in the trainer instead of vLLM, with
  short completions and a small generation batch.

Every override is printed with the card's value, and the recipe as run is
written to `OUTPUT_DIR/rehearse.yml` (embedded references resolved to
paths), so the rehearsal can be repeated with a plain `axolotl train`.
"""

from __future__ import annotations

import copy
import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from proofkd.cli.training_run import TrainingStopped, axolotl_train
from proofkd.core import embedded
from proofkd.core.io import atomic_path, unwritable_reason
from proofkd.core.logs import get_logger
from proofkd.core.recipes import RecipeError, read_recipe
from proofkd.core.run_log import read_run_log, training_records

LOG = get_logger("proofkd.rehearse")

SLICES = {
    "Qwen/Qwen3-1.7B": "proofkd:qwen3-1.7b-slice",
    "Qwen/Qwen3-1.7B-Base": "proofkd:qwen3-1.7b-base-slice",
    "Qwen/Qwen3-30B-A3B-Instruct-2507": "proofkd:qwen3-30b-a3b-slice",
    "Qwen/Qwen3-4B-Base": "proofkd:qwen3-4b-base-slice",
    "lllyx/Qwen3-4B-Base-GRPO": "proofkd:qwen3-4b-base-slice",
}
# A local base_model is a Stage-1 output: the Stage-1 student's shape.
LOCAL_BASE_SLICE = SLICES["Qwen/Qwen3-1.7B"]
# Generated rows per prompt strategy (`type:` of a dataset), or for GRPO prompts.
DATA = {
    "proofkd.plugin.prompt_strategies.stage1": (
        "proofkd:stem-synthetic?split=train&n=8&seed=0",
        "proofkd:stem-synthetic?split=heldout&n=2&seed=0",
    ),
    "proofkd.plugin.prompt_strategies.stage2": ("proofkd:legal-sample?split=train", "proofkd:legal-sample?split=eval"),
    "grpo": ("proofkd:arith-dapo?split=train&n=8&seed=0", None),
}


DISTILLATION_PLUGINS = ("proofkd.plugin.ProofKDPlugin", "proofkd.plugin.OPDPlugin")
REFERENCES_PLUGIN = "proofkd.plugin.EmbeddedReferencesPlugin"


class RehearseError(ValueError):
    """A recipe that cannot be rehearsed; the message names the key and the fix."""


@dataclass(frozen=True)
class Override:
    key: str  # dotted for nested keys: trl.use_vllm
    card: Any
    rehearsal: Any
    why: str


def _get(cfg: dict, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _set(cfg: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        cfg = cfg.setdefault(part, {})
    cfg[last] = value


def _model_slice(key: str, name: str) -> str:
    if name in SLICES:
        return SLICES[name]
    if key == "base_model" and (name.startswith((".", "/", "~")) or Path(name).exists()):
        return LOCAL_BASE_SLICE
    raise RehearseError(
        f"{key}: {name} has no real-width slice to rehearse with; the slices are of {', '.join(sorted(SLICES))}. "
        "Rehearse a recipe that names one of them, or run this one where the model can be downloaded"
    )


def _data_overrides(cfg: dict) -> list[Override]:
    overrides = []
    for key in ("datasets", "test_datasets"):
        for index, dataset in enumerate(cfg.get(key) or []):
            kind = "grpo" if cfg.get("rl") == "grpo" else dataset.get("type")
            if kind not in DATA:
                raise RehearseError(
                    f"{key}[{index}]: the format {kind!r} has no generated rows; rehearsal knows {', '.join(DATA)}"
                )
            rows = DATA[kind][0 if key == "datasets" else 1]
            if rows is None:
                raise RehearseError(f"{key}: a GRPO recipe evaluates no held-out set here; remove {key}")
            overrides.append(Override(f"{key}.{index}.path", dataset.get("path"), rows, "generated rows, same format"))
    return overrides


def overrides(cfg: dict, steps: int, output_dir: Path) -> list[Override]:
    """What a rehearsal changes in the recipe `cfg`, and why; every other value stays the card's."""
    changes = [
        Override(
            "base_model",
            cfg.get("base_model"),
            _model_slice("base_model", cfg["base_model"]),
            "real-width slice, random weights",
        )
    ]
    if cfg.get("proofkd_teacher") and not cfg.get("proofkd_teacher_server"):
        teacher = _model_slice("proofkd_teacher", cfg["proofkd_teacher"])
        changes.append(Override("proofkd_teacher", cfg["proofkd_teacher"], teacher, "real-width slice, random weights"))
        if cfg.get("proofkd_teacher_dtype") not in (None, "float32"):
            changes.append(Override("proofkd_teacher_dtype", cfg["proofkd_teacher_dtype"], "float32", "CPU precision"))
    changes += _data_overrides(cfg)
    changes += [
        Override("max_steps", cfg.get("max_steps"), steps, "a few steps"),
        Override("logging_steps", cfg.get("logging_steps"), 1, "every step in the log"),
        Override("output_dir", cfg.get("output_dir"), str(output_dir / "run"), "beside the rehearsal"),
        Override(
            "dataset_prepared_path",
            cfg.get("dataset_prepared_path"),
            str(output_dir / "prepared"),
            "beside the rehearsal",
        ),
    ]
    if cfg.get("bf16"):
        changes.append(Override("bf16", cfg["bf16"], False, "CPU precision (float32)"))
    plugins = list(cfg.get("plugins") or [])
    if any(p in plugins for p in DISTILLATION_PLUGINS):
        changes.append(Override("proofkd_profile", cfg.get("proofkd_profile"), True, "time and memory per part"))
    else:
        changes.append(
            Override("plugins", cfg.get("plugins"), [*plugins, REFERENCES_PLUGIN], "the steps in proofkd_log.jsonl")
        )
    if cfg.get("rl") == "grpo":
        # One generation per optimizer step, as many completions as the step trains on.
        per_step = int(cfg.get("micro_batch_size") or 1) * int(cfg.get("gradient_accumulation_steps") or 1)
        sizes = {"trl.use_vllm": False, "trl.max_completion_length": 32, "trl.generation_batch_size": per_step}
        changes += [
            Override(key, _get(cfg, key), value, "CPU sampling, short rollouts")
            for key, value in sizes.items()
            if _get(cfg, key) != value
        ]
    return changes


def _resolved(value: Any) -> Any:
    return str(embedded.resolve(value)) if embedded.is_reference(value) else value


def rehearsal_config(cfg: dict, changes: list[Override]) -> dict:
    """`cfg` with `changes` applied and every `proofkd:` reference they bring resolved to its cached path."""
    result = copy.deepcopy(cfg)
    for change in changes:
        parts = change.key.split(".")
        if len(parts) == 3 and parts[1].isdigit():  # datasets.0.path
            result[parts[0]][int(parts[1])][parts[2]] = _resolved(change.rehearsal)
        else:
            _set(result, change.key, _resolved(change.rehearsal))
    return result


def format_overrides(changes: list[Override]) -> str:
    lines = ["| key | card | rehearsal | why |", "|---|---|---|---|"]
    lines += [f"| {c.key} | {c.card} | {c.rehearsal} | {c.why} |" for c in changes]
    return "\n".join(lines)


def format_loss_parts(records: list[dict]) -> str:
    keys = sorted(
        {k for r in records for k in r if k not in ("step", "epoch") and "seconds/" not in k and "peak_gib/" not in k}
    )
    lines = ["| step | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
    for record in records:
        cells = [f"{record[k]:.4g}" if isinstance(record.get(k), float) else str(record.get(k, "")) for k in keys]
        lines.append(f"| {record.get('step', '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# What each printed row is, from the logged parts (`proofkd.plugin.profile`): (label, part whose peak is
# shown, part whose seconds are counted, parts whose seconds are taken away).
STAGE1_ROWS = (
    ("teacher forward", "teacher_forward", "teacher_forward", ()),
    ("student forward (body)", "student_forward", "student_forward", ("loss_head",)),
    ("loss head (forward and backward)", "loss_head", "loss_head", ()),
    ("student backward (body)", "micro_step", "micro_step", ("teacher_forward", "student_forward")),
    ("optimizer step", "optimizer_step", "optimizer_step", ()),
)
OPD_ROWS = (
    ("sampling and the student's scores", "rollout", "rollout", ("teacher_score",)),
    ("teacher scoring", "teacher_score", "teacher_score", ()),
    ("student forward and backward", "micro_step", "micro_step", ("rollout",)),
    ("optimizer step", "optimizer_step", "optimizer_step", ()),
)


def format_step_parts(record: dict) -> str:
    """One step's seconds per part and each part's peak memory, from its logged `*/seconds/*` entries."""
    prefix = "opd/" if any(key.startswith("opd/seconds/") for key in record) else "proofkd/"
    rows = OPD_ROWS if prefix == "opd/" else STAGE1_ROWS
    seconds = {k.rsplit("/", 1)[1]: v for k, v in record.items() if k.startswith(prefix + "seconds/")}
    peaks = {k.rsplit("/", 1)[1]: v for k, v in record.items() if k.startswith(prefix + "peak_gib/")}
    lines = ["| part | seconds | peak GiB above its start (of the span) |", "|---|---:|---:|"]
    for label, peak_of, counted, minus in rows:
        if counted not in seconds:
            continue
        value = seconds[counted] - sum(seconds.get(part, 0.0) for part in minus)
        peak = f"{peaks[peak_of]:.2f} ({peak_of})" if peak_of in peaks else ""
        lines.append(f"| {label} | {value:.2f} | {peak} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def run(recipe: str, steps: int = 2, output_dir: Path | None = None) -> dict:
    try:
        path, cfg = read_recipe(recipe)
    except RecipeError as error:
        raise RehearseError(str(error)) from None
    if steps < 1:
        raise RehearseError(f"--steps {steps}: a rehearsal needs at least one optimizer step")
    output_dir = output_dir or Path("outputs/rehearse") / path.stem
    reason = unwritable_reason(output_dir, option="--output-dir")
    if reason:
        raise RehearseError(f"--output-dir {output_dir}: {reason}")
    changes = overrides(cfg, steps, output_dir)
    print(f"\nproofkd rehearse {path}: what changes from the card (everything else is the card's)\n")
    print(format_overrides(changes))
    LOG.info("materialising the slices and rows (cached after the first run)")
    rehearsed = rehearsal_config(cfg, changes)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / "rehearse.yml"
    with atomic_path(config_path) as partial:
        partial.write_text(yaml.safe_dump(rehearsed, sort_keys=False), encoding="utf-8")

    started = time.monotonic()
    try:
        axolotl_train(config_path)
    except TrainingStopped as error:
        raise RehearseError(str(error)) from None
    summary = {
        "recipe": str(path),
        "config": str(config_path),
        "wall_seconds": round(time.monotonic() - started, 1),
        # ru_maxrss is in KiB on Linux: the largest child, here the training process
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2),
        "steps": training_records(read_run_log(rehearsed["output_dir"])),
    }
    with atomic_path(output_dir / "summary.json") as partial:
        partial.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"\nlogged loss parts ({config_path} through axolotl train)\n")
    print(format_loss_parts(summary["steps"]))
    parts = format_step_parts(summary["steps"][-1]) if summary["steps"] else ""
    if parts:
        print(f"\nstep {summary['steps'][-1].get('step')}, part by part (proofkd_profile)\n")
        print(parts)
    print(
        f"\nwall time {summary['wall_seconds']:.0f} s, peak memory {summary['peak_rss_gib']} GiB; "
        f"summary in {output_dir / 'summary.json'}"
    )
    return summary
