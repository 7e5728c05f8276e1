"""What an importance matrix buys each quantisation type, judged in llama.cpp against the HF model.

    python bench/imatrix.py [--checkpoint DIR_OR_REF] [--types Q3_K_M,...] [--threads 2] [--out DIR]

Converts the checkpoint to F16, computes the importance matrix on calibration
text (training-split Stage-1 problems), quantises every type without and with
it, and verifies each file on the held-out text (`proofkd verify`'s rules).
Prints one markdown row per type: mean KLD (± its standard error), same top
token and ln(PPL_Q/PPL_HF), without -> with, and the KLD ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

TYPES = ("Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_XS")


def main() -> None:
    from proofkd.core import embedded
    from proofkd.export.convert import convert
    from proofkd.export.imatrix import compute_imatrix, write_imatrix
    from proofkd.export.quantize import quantize
    from proofkd.export.verify import Reference, verify

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="proofkd:smollm2-135m-instruct")
    parser.add_argument("--types", default=",".join(TYPES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="where the files go (default: a temporary folder)")
    args = parser.parse_args()
    checkpoint = embedded.resolve(args.checkpoint) if embedded.is_reference(args.checkpoint) else Path(args.checkpoint)
    out = Path(args.out or tempfile.mkdtemp(prefix="proofkd-imatrix-"))
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    f16 = convert(checkpoint, out / "model-F16.gguf", progress=False)
    imatrix_path = write_imatrix(compute_imatrix(checkpoint), out / "model.imatrix.gguf")
    reference = Reference.from_checkpoint(checkpoint)
    print(f"checkpoint {args.checkpoint}: {reference.tokens} scored tokens, files in {out}\n")
    print("| type | bits/weight | KLD mean, without -> with | ratio | same top | ln(PPL_Q/PPL_HF) |")
    print("|---|---:|---:|---:|---:|---:|")
    for quant in args.types.split(","):
        row = {}
        for label, matrix in (("without", None), ("with", imatrix_path)):
            path, _ = quantize(
                f16, out / f"model-{quant}-{label}.gguf", quant, imatrix=matrix, threads=args.threads, progress=False
            )
            row[label] = verify(path, reference, quant=quant, threads=args.threads)
        a, b = row["without"].statistics, row["with"].statistics
        print(
            f"| {quant} | {row['with'].bits_per_weight:.2f} | {a.kld_mean:.4f} ± {a.kld_mean_err:.4f} -> "
            f"{b.kld_mean:.4f} ± {b.kld_mean_err:.4f} | {b.kld_mean / a.kld_mean:.2f} | "
            f"{a.same_top:.1%} -> {b.same_top:.1%} | {a.ln_ppl_ratio:+.4f} -> {b.ln_ppl_ratio:+.4f} |",
            flush=True,
        )
    print(f"\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
