"""`proofkd eval`: several models on the same lm-eval tasks, side by side, in one report.

    proofkd eval --model teacher=proofkd:smollm2-135m-instruct \\
                 --model student=outputs/quickstart/student \\
                 --tasks proofkd_stem,proofkd_legal --out outputs/eval

`add_parser` registers the subcommand on the `proofkd` parser; the evaluation
wing (and lm-eval, torch) is imported only when the command runs, so the rest
of the command line stays instant.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_TASKS = "proofkd_stem,proofkd_legal,proofkd_math"


def _limit(text: str) -> int | float:
    """`--limit`: a count of samples per task, or a fraction of each task below 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--limit must be a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--limit must be positive, got {text}")
    return int(value) if value >= 1 and value.is_integer() else value


def _batch_size(text: str) -> int | str:
    if text == "auto" or text.startswith("auto:"):
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--batch-size must be a positive integer or 'auto', got {text!r}")
    return int(text)


def _chat_template(value: str | None) -> bool | list[str]:
    if value is None:
        return False
    if value == "all":
        return True
    return [name.strip() for name in value.split(",") if name.strip()]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `eval` on `subparsers` (the `proofkd` command's) and return its parser."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate several models side by side on lm-eval tasks and write a report",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=SPEC",
        help="a model to evaluate (repeat for each): SPEC is an HF checkpoint folder, a proofkd: reference, or a "
        ".gguf file, optionally followed by ::tokenizer=<hf folder>",
    )
    parser.add_argument(
        "--tasks", default=DEFAULT_TASKS, help=f"comma-separated lm-eval tasks or groups (default: {DEFAULT_TASKS})"
    )
    parser.add_argument(
        "--out", default="outputs/eval", help="output folder: report.md, report.png, and one folder per model"
    )
    parser.add_argument(
        "--limit", type=_limit, default=None, help="samples per task (or a fraction below 1); default all"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--batch-size", type=_batch_size, default=1, help="lm-eval batch size, or 'auto' (default: 1)")
    parser.add_argument(
        "--max-gen-toks", type=int, default=None, help="cap the tokens generated per answer in every task"
    )
    parser.add_argument("--dtype", default=None, help="model dtype (default: float32 on a CPU, else auto)")
    parser.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="HF tokenizer folder for model NAME (for a GGUF whose folder has none)",
    )
    parser.add_argument(
        "--apply-chat-template",
        nargs="?",
        const="all",
        default=None,
        metavar="TASKS",
        help="wrap prompts in each model's chat template: for every task, or only for the comma-separated TASKS "
        "(e.g. proofkd_math for a chat model; the Stage-1 and Stage-2 formats are plain text)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--include-path", default=None, help="task folder to index (default: the tasks shipped with proofkd)"
    )
    parser.add_argument(
        "--data-dir", default=None, help="root of built recipe data for the held-out tasks (default: ./data)"
    )
    parser.set_defaults(func=run)
    return parser


def _check_destination_and_device(out: str, device: str) -> None:
    """Before any model loads: an --out that can be written, a --device this machine has."""
    from proofkd.core.devices import missing_device_reason
    from proofkd.core.io import unwritable_reason
    from proofkd.evals.models import EvalSetupError

    reason = unwritable_reason(out)
    if reason:
        raise EvalSetupError(f"--out {out}: {reason}")
    reason = missing_device_reason(device)
    if reason:
        raise EvalSetupError(f"--device {reason}; pass --device cpu, or a device it has")


def run(args: argparse.Namespace) -> int:
    """Run the evaluation; 0 on success, 1 when a model failed (the others are in the report), 2 when the
    command line names something that is not there.

    Only those errors become a one-line message; anything else keeps its traceback.
    """
    from proofkd.evals.data import MissingEvalSplitError
    from proofkd.evals.models import EvalSetupError, parse_model_spec, with_tokenizers
    from proofkd.evals.report import ModelRunError, run_side_by_side

    try:
        _check_destination_and_device(args.out, args.device)
        models = with_tokenizers([parse_model_spec(text) for text in args.model], args.tokenizer)
        tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
        if not tasks:
            raise EvalSetupError("--tasks is empty; name at least one task or group, e.g. proofkd_stem")
        run_side_by_side(
            models,
            tasks,
            args.out,
            include_path=args.include_path,
            data_dir=args.data_dir,
            limit=args.limit,
            device=args.device,
            batch_size=args.batch_size,
            max_gen_toks=args.max_gen_toks,
            dtype=args.dtype,
            apply_chat_template=_chat_template(args.apply_chat_template),
            threads=args.threads,
        )
    except (EvalSetupError, MissingEvalSplitError) as error:
        print(f"proofkd eval: {error}", file=sys.stderr)
        return 2
    except ModelRunError as error:
        print(f"proofkd eval: {error}", file=sys.stderr)
        return 1
    return 0
