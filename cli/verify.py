"""`proofkd verify`: GGUF files judged in llama.cpp against the HF model they came from.

    proofkd verify outputs/gguf/student/*.gguf --reference outputs/quickstart/student [--json verification.json]

Every file's header is read before any model runs, so a missing, truncated or
foreign file is refused by name at once. The rules and figures are described
in `proofkd.export.verify`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from proofkd.core.logs import get_logger

LOG = get_logger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `verify` on `subparsers` (the `proofkd` command's) and return its parser."""
    parser = subparsers.add_parser(
        "verify",
        help="judge GGUF files in llama.cpp against their HF model (llama-perplexity's KL statistics)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("files", nargs="+", metavar="FILE.gguf", help="the GGUF files to judge")
    parser.add_argument(
        "--reference", required=True, help="the HF model folder they came from (or a proofkd: reference)"
    )
    add_text_option(parser)
    parser.add_argument("--window", type=int, default=512, help="tokens per scored window (default 512)")
    parser.add_argument("--windows", type=int, default=4, help="windows to score at most (default 4)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: every core)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.set_defaults(func=run)
    return parser


def add_text_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--text",
        default=None,
        help="UTF-8 file of held-out text in the recipe's format (default: held-out Stage-1 problems)",
    )


def read_text_option(value: str | None) -> str | None:
    from proofkd.export.verify import read_text_file

    return read_text_file(value) if value else None


def check_vocabularies(headers, reference_dir, config: dict) -> None:
    """Each file must have the vocabulary rows of the reference it is judged against."""
    from proofkd.export.verify import VerificationInputError

    rows = config.get("vocab_size")
    for header in headers:
        if rows is not None and header.vocab_size is not None and header.vocab_size != rows:
            raise VerificationInputError(
                f"{header.path} has {header.vocab_size} vocabulary rows and {reference_dir} has {rows}, so it was "
                "not exported from that model: pass the HF folder it came from as --reference"
            )


def run(args: argparse.Namespace) -> int:
    """0 when every file passes, 1 when one fails, 2 when an input is unusable (named on stderr)."""
    from proofkd.core import embedded
    from proofkd.core.io import atomic_path, unwritable_reason
    from proofkd.export.convert import ConversionError, read_checkpoint
    from proofkd.export.gguf_file import GGUFFileError, read_gguf
    from proofkd.export.verify import Reference, VerificationInputError, verification_table, verify

    try:
        headers = [read_gguf(path) for path in args.files]
        reference_dir = embedded.resolve(args.reference) if embedded.is_reference(args.reference) else args.reference
        _, config = read_checkpoint(reference_dir)
        check_vocabularies(headers, reference_dir, config)
        text = read_text_option(args.text)
        if args.json and (reason := unwritable_reason(Path(args.json).parent, "--json")):
            raise VerificationInputError(f"--json {args.json}: {reason}")
        LOG.info("running %s in float32 over the held-out text", reference_dir)
        reference = Reference.from_checkpoint(reference_dir, text=text, window=args.window, windows=args.windows)
    except (GGUFFileError, ConversionError, VerificationInputError, embedded.EmbeddedReferenceError) as error:
        print(f"proofkd verify: {error}", file=sys.stderr)
        return 2
    results = []
    for header in headers:
        LOG.info("verifying %s (%s) in llama.cpp", header.path.name, header.file_type)
        results.append(verify(header.path, reference, threads=args.threads))
    print(verification_table(results))
    if args.json:
        with atomic_path(args.json) as tmp:
            report = {"reference": str(reference_dir), "files": [r.to_json() for r in results]}
            tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0 if all(r.passed for r in results) else 1
