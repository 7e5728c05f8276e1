"""Time and peak memory of each GGUF export step, for the embedded SmolLM2-135M (or any checkpoint).

    python bench/export.py [--checkpoint DIR] [--threads 2] [--out DIR]

Each step runs in a fresh Python process, so its peak resident memory is its
own (the quantiser's child process included): converting to F16 (streamed,
one tensor at a time), quantising to each type, and verifying each file
against the checkpoint in llama.cpp. Prints a table; the
checkpoint's size on disk is given for scale (a converter that held the model
in memory would peak above it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

STEP = r"""
import json, resource, sys, time
from pathlib import Path
kind, checkpoint, out, quant, threads = sys.argv[1:6]
threads = int(threads)
start = time.perf_counter()
if kind == "convert":
    from proofkd.export.convert import convert
    convert(checkpoint, Path(out) / "model-F16.gguf", progress=False)
elif kind == "quantize":
    from proofkd.export.quantize import quantize
    quantize(Path(out) / "model-F16.gguf", Path(out) / f"model-{quant}.gguf", quant, threads=threads, progress=False)
else:
    from proofkd.export.verify import Reference, verify
    ref = Reference.from_checkpoint(checkpoint)
    result = verify(Path(out) / f"model-{quant}.gguf", ref, quant=quant, threads=threads)
    extra = {"kl": result.statistics.kld_mean, "top1": result.statistics.same_top, "passed": result.passed}
seconds = time.perf_counter() - start
peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
print(json.dumps({"seconds": seconds, "peak_mib": peak, **(extra if kind == "verify" else {})}))
"""

QUANTS = ("Q8_0", "Q5_K_M", "Q4_K_M")


def run_step(kind: str, checkpoint: Path, out: Path, quant: str, threads: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", STEP, kind, str(checkpoint), str(out), quant, str(threads)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="HF model folder (default: the embedded SmolLM2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="where the GGUF files go (default: a temporary folder)")
    args = parser.parse_args()
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
    else:
        from proofkd.core import embedded

        checkpoint = embedded.resolve("proofkd:smollm2-135m-instruct")
    out = Path(args.out or tempfile.mkdtemp(prefix="proofkd-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    size = sum(p.stat().st_size for p in checkpoint.glob("*.safetensors")) / 2**20

    rows = [("convert to F16", run_step("convert", checkpoint, out, "F16", args.threads))]
    for quant in QUANTS:
        rows.append((f"quantise to {quant}", run_step("quantize", checkpoint, out, quant, args.threads)))
    for quant in ("F16", *QUANTS):
        rows.append((f"verify {quant}", run_step("verify", checkpoint, out, quant, args.threads)))

    print(f"checkpoint {checkpoint} ({size:.0f} MiB of safetensors), {args.threads} threads\n")
    print("| step | seconds | peak RSS (MiB) | KL(HF ‖ GGUF) | top-1 |")
    print("|---|---:|---:|---:|---:|")
    for label, row in rows:
        kl = f"{row['kl']:.2e}" if "kl" in row else ""
        top1 = f"{row['top1']:.1%}" if "top1" in row else ""
        print(f"| {label} | {row['seconds']:.1f} | {row['peak_mib']:.0f} | {kl} | {top1} |")


if __name__ == "__main__":
    main()
