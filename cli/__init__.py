"""The `proofkd` command line.

    proofkd quickstart            Stage-1 distillation on the embedded default (CPU, offline)
    proofkd quickstart --opd      on-policy distillation on the embedded default (CPU, offline)
    proofkd data build NAME       build a recipe's train/eval data from its manifest, with a report
    proofkd data list             the manifests that ship with proofkd
    proofkd recipes list          the recipes that ship with proofkd, with their paths
    proofkd recipes copy NAME     copy a shipped recipe (e.g. quickstart/stage1_kd) to edit it
    proofkd export CKPT           convert to GGUF, quantise and verify, without publishing
    proofkd publish CKPT --repo   export, verify, write the model card and upload to the Hub
    proofkd verify FILE.gguf...   judge GGUF files in llama.cpp against their HF model
    proofkd resolve REF           materialise a proofkd: reference and print its path
    proofkd plan RECIPE --gpu G   memory plan of a recipe per GPU, and which teacher placements fit
    proofkd rehearse RECIPE       a published recipe through axolotl train at real width on the CPU
    proofkd teacher cache RECIPE  run the teacher once over a recipe's rows and store its top-k for training
    proofkd plot OUTPUT_DIR       a run's loss parts, divergences and schedule over its steps, as a PNG
    proofkd eval --model N=SPEC   evaluate models side by side on lm-eval tasks, with a report

Each subcommand imports its wing only when it runs, so `proofkd --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version
from pathlib import Path

from proofkd.cli import evaluate, verify
from proofkd.core.logs import enable_console_logging


def _quickstart(args: argparse.Namespace) -> int:
    from proofkd.cli import quickstart

    try:
        if args.opd:
            quickstart.run_opd(recipe=args.recipe, output_dir=Path(args.output_dir or "outputs/quickstart-opd"))
        else:
            quickstart.run(recipe=args.recipe, output_dir=Path(args.output_dir or "outputs/quickstart"))
    except quickstart.QuickstartError as error:
        print(f"proofkd quickstart: {error}", file=sys.stderr)
        return 2
    return 0


def _data_build(args: argparse.Namespace) -> int:
    from proofkd.core.data.builder import SourceError, build
    from proofkd.core.data.manifest import load_manifest

    try:
        manifest = load_manifest(args.manifest)
        report = build(
            manifest,
            args.out,
            source_root=args.source_root,
            tokenizer=args.tokenizer,
            count_tokens=not args.no_tokens,
        )
    except (FileNotFoundError, SourceError, ValueError) as error:
        print(f"proofkd data build: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # writing the output: no space, no permission, a path that went away
        where = f" {error.filename}" if error.filename else ""
        print(
            f"proofkd data build: could not write{where}: {error.strerror or error}; nothing was written. "
            "Free space or fix the permissions, or pass another --out",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"proofkd data build: interrupted; nothing was written, {args.out} is as it was", file=sys.stderr)
        return 130
    print(report.to_markdown())
    print(f"wrote {report.output}/train.jsonl ({report.train_rows} rows) and eval.jsonl ({report.eval_rows} rows)")
    return 0


def _data_list(args: argparse.Namespace) -> int:
    from proofkd.core.data.manifest import known_manifests, load_manifest

    failed = 0
    for name in known_manifests():
        try:
            manifest = load_manifest(name)
        except ValueError as error:  # a shipped manifest edited in place: list the rest, name this one
            print(f"proofkd data list: {error}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name:12s} {manifest.format:7s} {len(manifest.sources):2d} sources  {manifest.description}")
    return 2 if failed else 0


def _recipes_list(args: argparse.Namespace) -> int:
    from proofkd.core.recipes import list_recipes

    recipes = list_recipes()
    width = max(len(r.name) for r in recipes)
    for recipe in recipes:
        print(f"{recipe.name:{width}s}  {recipe.path}  {recipe.description}")
    return 0


def _recipes_copy(args: argparse.Namespace) -> int:
    from proofkd.core.recipes import CopyRefusedError, UnknownRecipeError, copy_recipe

    try:
        written = copy_recipe(args.name, args.dest, force=args.force)
    except (UnknownRecipeError, CopyRefusedError) as error:
        print(f"proofkd recipes copy: {error}", file=sys.stderr)
        return 2
    print(written)
    return 0


def _checkpoint(value: str):
    from proofkd.core import embedded

    return embedded.resolve(value) if embedded.is_reference(value) else Path(value)


def _export(args: argparse.Namespace) -> int:
    from proofkd.export.convert import ConversionError
    from proofkd.export.publish import PublishError, export, parse_quants
    from proofkd.export.verify import verification_table

    try:
        done = export(
            _checkpoint(args.checkpoint),
            args.out,
            parse_quants(args.quants),
            text=verify.read_text_option(args.text),
            imatrix=not args.no_imatrix,
            calibration=args.calibration,
            threads=args.threads,
            pre_tokenizer=args.pre_tokenizer,
        )
    except (ConversionError, PublishError, ValueError) as error:
        print(f"proofkd export: {error}", file=sys.stderr)
        return 2
    print(verification_table(done.results))
    return 0 if not done.failed else 1


def _publish(args: argparse.Namespace) -> int:
    from proofkd.export.convert import ConversionError
    from proofkd.export.publish import PublishError, parse_quants, publish

    try:
        plan = publish(
            _checkpoint(args.checkpoint),
            args.repo,
            quants=parse_quants(args.quants),
            out_dir=args.out,
            dry_run=args.dry_run,
            skip_failed=args.skip_failed,
            private=args.private,
            base_model=args.base_model,
            license=args.license,
            text=verify.read_text_option(args.text),
            imatrix=not args.no_imatrix,
            calibration=args.calibration,
            threads=args.threads,
            pre_tokenizer=args.pre_tokenizer,
        )
    except (ConversionError, PublishError, ValueError) as error:
        print(f"proofkd publish: {error}", file=sys.stderr)
        return 2
    print(plan.describe())
    if plan.url:
        print(plan.url)
    return 0


def _resolve(args: argparse.Namespace) -> int:
    from proofkd.core import embedded

    try:
        print(embedded.resolve(args.reference))
    except embedded.EmbeddedReferenceError as error:
        print(f"proofkd resolve: {error}", file=sys.stderr)
        return 2
    return 0


def _plan(args: argparse.Namespace) -> int:
    from proofkd.plugin.plan import PlanError, plan

    try:
        print(plan(args.recipe, args.gpu, args.gpus).to_markdown())
    except PlanError as error:
        print(f"proofkd plan: {error}", file=sys.stderr)
        return 2
    return 0


def _rehearse(args: argparse.Namespace) -> int:
    from proofkd.cli import rehearse

    try:
        rehearse.run(args.recipe, steps=args.steps, output_dir=Path(args.output_dir) if args.output_dir else None)
    except rehearse.RehearseError as error:
        print(f"proofkd rehearse: {error}", file=sys.stderr)
        return 2
    return 0


def _teacher_cache(args: argparse.Namespace) -> int:
    import time

    from proofkd.core.recipes import RecipeError
    from proofkd.plugin.teacher import TeacherMismatchError, TeacherOutputError
    from proofkd.plugin.teacher_cache import TeacherCacheError, cache_recipe
    from proofkd.plugin.teacher_server import TeacherServerError

    started = time.monotonic()
    try:
        folder, manifest = cache_recipe(
            args.recipe,
            args.out,
            device=args.device,
            logprob_dtype=args.logprob_dtype,
            rows_per_shard=args.rows_per_shard,
            rows_per_batch=args.rows_per_batch,
            overwrite=args.overwrite,
        )
    except (RecipeError, TeacherCacheError, TeacherMismatchError, TeacherOutputError, TeacherServerError) as error:
        print(f"proofkd teacher cache: {error}", file=sys.stderr)
        return 2
    size = sum(shard["bytes"] for shard in manifest.shards)
    print(
        f"teacher cache {folder}: {manifest.rows} rows, top-{manifest.key.topk} in {manifest.logprob_dtype}, "
        f"{size / 2**20:.1f} MiB in {len(manifest.shards)} shards, {time.monotonic() - started:.0f} s; "
        f"train with proofkd_teacher_cache: {folder}"
    )
    return 0


def _plot(args: argparse.Namespace) -> int:
    from proofkd.cli.plot import PlotError, plot_run

    try:
        print(plot_run(args.output_dir, args.out))
    except PlotError as error:
        print(f"proofkd plot: {error}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proofkd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"proofkd {version('proofkd')}")
    commands = parser.add_subparsers(dest="command", required=True)

    quick = commands.add_parser("quickstart", help="distil the embedded SmolLM2 teacher into a smaller student")
    quick.add_argument(
        "--opd", action="store_true", help="on-policy distillation instead (recipe quickstart/opd, held-out prompts)"
    )
    quick.add_argument(
        "--recipe",
        default=None,
        help="CPU recipe file to train (default: the shipped quickstart/stage1_kd, or quickstart/opd)",
    )
    quick.add_argument(
        "--output-dir", default=None, help="where the student and summary go (default: outputs/quickstart[-opd])"
    )
    quick.set_defaults(func=_quickstart)

    data = commands.add_parser("data", help="build and inspect recipe data").add_subparsers(dest="data", required=True)
    build = data.add_parser("build", help="build a recipe's train/eval files from its manifest")
    build.add_argument("manifest", help="a recipe name (stage1_kd, stage2_sft, opd) or a manifest .yml")
    build.add_argument("--out", default="data", help="output root; files go to OUT/NAME/ (default: data)")
    build.add_argument(
        "--source-root",
        default=None,
        help="read sources from local copies DIR/<id>.jsonl (or .parquet, or a folder) instead of the Hub",
    )
    build.add_argument("--tokenizer", default=None, help="tokenizer for token counts (default: the manifest's)")
    build.add_argument("--no-tokens", action="store_true", help="skip token counting")
    build.set_defaults(func=_data_build)
    listing = data.add_parser("list", help="the manifests that ship with proofkd")
    listing.set_defaults(func=_data_list)

    recipes = commands.add_parser("recipes", help="list and copy the recipes that ship with proofkd")
    recipes = recipes.add_subparsers(dest="recipes", required=True)
    recipes.add_parser("list", help="name, installed path and description of every recipe").set_defaults(
        func=_recipes_list
    )
    copy = recipes.add_parser("copy", help="copy a recipe to edit it, e.g. `proofkd recipes copy quickstart/stage1_kd`")
    copy.add_argument("name", help="a name from `proofkd recipes list` (stage1_kd, quickstart/stage1_kd, ...)")
    copy.add_argument("dest", nargs="?", default=".", help="a folder, or a file name (default: .)")
    copy.add_argument("--force", action="store_true", help="overwrite the destination if it exists")
    copy.set_defaults(func=_recipes_copy)

    quants = "Q4_K_M,Q5_K_M,Q8_0,F16"
    for name, func, help_text in (
        ("export", _export, "convert a checkpoint to GGUF, quantise and verify every file"),
        ("publish", _publish, "export, verify, write the model card and upload to the Hugging Face Hub"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("checkpoint", help="an HF model folder (or a proofkd: reference)")
        sub.add_argument(
            "--quants",
            default=quants,
            help=f"comma-separated: F16, Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_K_S, Q3_K_M, IQ4_XS (default {quants})",
        )
        verify.add_text_option(sub)
        sub.add_argument(
            "--calibration",
            default=None,
            help="UTF-8 file of training text for the importance matrix (default: training-split Stage-1 problems)",
        )
        sub.add_argument(
            "--no-imatrix", action="store_true", help="quantise without an importance matrix (it is tried by default)"
        )
        sub.add_argument("--threads", type=int, default=None, help="threads for quantising and verifying")
        sub.add_argument("--pre-tokenizer", default=None, help="llama.cpp pre-tokenizer name, if detection fails")
        if name == "export":
            sub.add_argument("--out", required=True, help="folder for the GGUF files and verification.json")
        else:
            sub.add_argument("--repo", required=True, help="the Hub repository, owner/name")
            sub.add_argument("--out", default=None, help="staging folder (default outputs/gguf/<name>)")
            sub.add_argument("--dry-run", action="store_true", help="do everything but the upload")
            sub.add_argument(
                "--skip-failed", action="store_true", help="upload the files that passed even if some failed"
            )
            sub.add_argument("--private", action="store_true", help="create the repository private")
            sub.add_argument("--base-model", default=None, help="Hub id of the original model, for the card")
            sub.add_argument("--license", default=None, help="license id for the card, e.g. apache-2.0")
        sub.set_defaults(func=func)

    resolve = commands.add_parser("resolve", help="materialise a proofkd: reference and print its path")
    resolve.add_argument("reference", help="e.g. proofkd:smollm2-135m-instruct?layers=10")
    resolve.set_defaults(func=_resolve)
    plan = commands.add_parser("plan", help="memory plan of a recipe per GPU, and which teacher placements fit")
    plan.add_argument("recipe", help="a recipe file or a shipped recipe's name (stage1_kd, opd, ...)")
    plan.add_argument("--gpu", required=True, choices=["h100-80gb", "h200-141gb"], help="the GPU kind")
    plan.add_argument("--gpus", type=int, default=1, help="GPUs available (2 allows the teacher on a second one)")
    plan.set_defaults(func=_plan)
    rehearse = commands.add_parser(
        "rehearse", help="a published recipe through axolotl train at real width on the CPU, every override printed"
    )
    rehearse.add_argument("recipe", help="a recipe file or a shipped recipe's name (stage1_kd, stage2_sft, opd)")
    rehearse.add_argument("--steps", type=int, default=2, help="optimizer steps to run (default 2)")
    rehearse.add_argument("--output-dir", default=None, help="default outputs/rehearse/<recipe name>")
    rehearse.set_defaults(func=_rehearse)
    teacher = commands.add_parser("teacher", help="work done by a recipe's teacher ahead of training")
    cache = teacher.add_subparsers(dest="teacher", required=True).add_parser(
        "cache", help="run the teacher once over a recipe's rows and store its top-k at every token"
    )
    cache.add_argument("recipe", help="a Stage-1 recipe file or a shipped recipe's name")
    cache.add_argument("--out", default=None, help="the cache folder (default: the recipe's proofkd_teacher_cache)")
    cache.add_argument("--device", default=None, help="device of an in-process teacher (default: cuda if present)")
    cache.add_argument(
        "--logprob-dtype", default="float16", choices=["float16", "float32"], help="stored log-probs (default float16)"
    )
    cache.add_argument("--rows-per-shard", type=int, default=256, help="rows per file, the unit of resuming")
    cache.add_argument("--rows-per-batch", type=int, default=4, help="rows per teacher forward")
    cache.add_argument("--overwrite", action="store_true", help="replace a cache built for other inputs")
    cache.set_defaults(func=_teacher_cache)
    plot = commands.add_parser("plot", help="draw a run's loss parts and proof weight over its steps (a PNG)")
    plot.add_argument("output_dir", help="a run's output_dir, the folder holding proofkd_log.jsonl")
    plot.add_argument("--out", default=None, help="the PNG to write (default OUTPUT_DIR/proofkd_log.png)")
    plot.set_defaults(func=_plot)
    verify.add_parser(commands)
    evaluate.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    enable_console_logging()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        # Every command writes under temporary names, so what it finished is kept and nothing is half-written.
        print(f"proofkd {args.command}: interrupted; the files it had finished are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
