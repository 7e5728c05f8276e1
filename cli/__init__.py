"""The `proofkd` command line.

    proofkd quickstart            Stage-1 distillation on the embedded default (CPU, offline)
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
