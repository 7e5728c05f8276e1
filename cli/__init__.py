"""The `proofkd` command line.

    proofkd quickstart            Stage-1 distillation on the embedded default (CPU, offline)
    proofkd data build NAME       build a recipe's train/eval data from its manifest, with a report
    proofkd data list             the manifests that ship with proofkd
    proofkd resolve REF           materialise a proofkd: reference and print its path

Each subcommand imports its wing only when it runs, so `proofkd --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proofkd import __version__
from proofkd.logs import enable_console_logging


def _quickstart(args: argparse.Namespace) -> int:
    from proofkd.cli.quickstart import run

    run(recipe=Path(args.recipe), output_dir=Path(args.output_dir))
    return 0


def _data_build(args: argparse.Namespace) -> int:
    from proofkd.data.builder import SourceError, build
    from proofkd.data.manifest import load_manifest

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
    print(report.to_markdown())
    print(f"wrote {report.output}/train.jsonl ({report.train_rows} rows) and eval.jsonl ({report.eval_rows} rows)")
    return 0


def _data_list(args: argparse.Namespace) -> int:
    from proofkd.data.manifest import known_manifests, load_manifest

    for name in known_manifests():
        manifest = load_manifest(name)
        print(f"{name:12s} {manifest.format:7s} {len(manifest.sources):2d} sources  {manifest.description}")
    return 0


def _resolve(args: argparse.Namespace) -> int:
    from proofkd import embedded

    try:
        print(embedded.resolve(args.reference))
    except embedded.EmbeddedReferenceError as error:
        print(f"proofkd resolve: {error}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="proofkd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"proofkd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    quick = commands.add_parser("quickstart", help="distil the embedded SmolLM2 teacher into a smaller student")
    quick.add_argument("--recipe", default="yaml/quickstart/stage1_kd.yml", help="CPU recipe to train")
    quick.add_argument("--output-dir", default="outputs/quickstart", help="where the student and summary go")
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

    resolve = commands.add_parser("resolve", help="materialise a proofkd: reference and print its path")
    resolve.add_argument("reference", help="e.g. proofkd:smollm2-135m-instruct?layers=10")
    resolve.set_defaults(func=_resolve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    enable_console_logging()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
