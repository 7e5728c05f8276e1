"""Time and peak memory of the Stage-1 loss head (forward + backward) against its floor and baselines.

    python bench/loss_head.py --device cuda                      # Qwen3-1.7B student / Qwen3-4B teacher shapes, bf16
    python bench/loss_head.py --device cpu --tokens 256 1024     # small shapes on a CPU (the default there)

Rows, for each token count N (all measured in this run, on the same inputs):

* four-matmul floor: the matmuls no exact head can avoid, in the input dtype:
  student logits H W^T, teacher logits H_t W_t^T, and the two gradient
  matmuls G W and G^T H (with the logits standing in for G). Nothing else.
* naive PyTorch: the loss written with full `[N, vocab]` float32 logits and
  autograd taking the gradient.
* Liger fused linear JSD: an outside reference for a chunked distillation
  head (forward KL, beta = 0, same temperature; no CE term and no proof
  weights, so it computes less than the others). It needs Triton on a GPU;
  the row says "not installed" or "needs CUDA" otherwise.
* ours: `proofkd.plugin.loss.proof_kd_loss`, eager and with `compile=True`
  (opt-in; the warm-up calls absorb the compile).

Time is the median of `--repeats` calls after `--warmup` calls. "extra peak"
is the peak allocated during one call beyond what existed before it (inputs)
and beyond the gradients it returns (student hidden and output weight), i.e.
the head's own working memory; on CUDA from the caching allocator, on CPU
from the tensors PyTorch's operators create (see `bench/measure.py`: a lower
bound that misses kernels' internal scratch). "loss" lets one check that
naive and ours agree.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import GiB, MiB, extra_peak_bytes, is_out_of_memory, median_seconds  # noqa: E402

from proofkd.plugin.loss import proof_kd_loss  # noqa: E402

# Qwen3-1.7B (student) and Qwen3-4B (teacher): hidden sizes and their shared vocabulary rows.
REAL = {"hidden": 2048, "teacher_hidden": 2560, "vocab": 151936}
SMALL = {"hidden": 256, "teacher_hidden": 384, "vocab": 32768}
TEMPERATURE, CE_COEF, KD_COEF, PROOF_WEIGHT = 2.0, 0.55, 0.45, 2.5


def make_inputs(n: int, shapes: dict, dtype: torch.dtype, device: torch.device, masked: float, seed: int) -> dict:
    g = torch.Generator(device="cpu").manual_seed(seed)
    h, ht, v = shapes["hidden"], shapes["teacher_hidden"], shapes["vocab"]

    def rand(*size, scale=1.0):
        return (scale * torch.randn(*size, generator=g)).to(device=device, dtype=dtype)

    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < masked] = -100
    return {
        "student_hidden": rand(n, h).requires_grad_(),
        "student_weight": rand(v, h, scale=h**-0.5).requires_grad_(),
        "teacher_hidden": rand(n, ht),
        "teacher_weight": rand(v, ht, scale=ht**-0.5),
        "labels": labels.to(device),
        "proof_mask": (torch.rand(n, generator=g) < 0.5).long().to(device),
    }


def floor(x: dict) -> None:
    hs, ws = x["student_hidden"].detach(), x["student_weight"].detach()
    z = hs @ ws.T
    x["teacher_hidden"] @ x["teacher_weight"].T
    z @ ws
    z.T @ hs


def naive(x: dict) -> torch.Tensor:
    hs, ws, labels = x["student_hidden"], x["student_weight"], x["labels"]
    valid = labels != -100
    proof = (x["proof_mask"] != 0) & valid
    z = (hs @ ws.T).float()
    t = (x["teacher_hidden"] @ x["teacher_weight"].T).float()
    ce = torch.nn.functional.cross_entropy(z, labels, ignore_index=-100, reduction="none")
    c = torch.where(proof, PROOF_WEIGHT, 1.0) * valid
    log_q = torch.log_softmax(t / TEMPERATURE, dim=-1)
    log_p = torch.log_softmax(z / TEMPERATURE, dim=-1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1) * valid
    loss = CE_COEF * (c * ce).sum() / c.sum().clamp(min=1) + KD_COEF * TEMPERATURE**2 * kl.sum() / valid.sum().clamp(
        min=1
    )
    loss.backward()
    return loss


def ours(x: dict, chunk_size: int | None, **options) -> torch.Tensor:
    loss, _ = proof_kd_loss(
        x["student_hidden"],
        x["student_weight"],
        x["teacher_hidden"],
        x["teacher_weight"],
        x["labels"],
        x["proof_mask"],
        PROOF_WEIGHT,
        temperature=TEMPERATURE,
        ce_coef=CE_COEF,
        kd_coef=KD_COEF,
        chunk_size=chunk_size,
        **options,
    )
    loss.backward()
    return loss


def liger(device: torch.device):
    """Liger's fused linear JSD as a callable on the inputs, or the reason it cannot run here."""
    if importlib.util.find_spec("liger_kernel") is None:
        return "not installed"
    if device.type != "cuda":
        return "needs CUDA"
    from liger_kernel.transformers import LigerFusedLinearJSD

    head = LigerFusedLinearJSD(jsd_beta=0.0, temperature=TEMPERATURE)

    def run(x: dict) -> torch.Tensor:
        loss = head(x["student_hidden"], x["student_weight"], x["teacher_hidden"], x["teacher_weight"], x["labels"])
        loss.backward()
        return loss

    return run


def measure(fn, x: dict, device: torch.device, args) -> dict:
    def call():
        x["student_hidden"].grad = x["student_weight"].grad = None
        return fn(x)

    try:
        seconds = median_seconds(call, device, warmup=args.warmup, repeats=args.repeats)
        loss = call().detach() if fn is not floor else None
        x["student_hidden"].grad = x["student_weight"].grad = None
        peak = extra_peak_bytes(call, device)
        grads = [t.grad for t in (x["student_hidden"], x["student_weight"]) if t.grad is not None]
        if peak is not None:
            peak = max(peak - sum(g.numel() * g.element_size() for g in grads), 0)
        x["student_hidden"].grad = x["student_weight"].grad = None
    except (RuntimeError, torch.OutOfMemoryError) as error:
        if not is_out_of_memory(error):
            raise
        x["student_hidden"].grad = x["student_weight"].grad = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {"note": "out of memory"}
    value = float(loss) if isinstance(loss, torch.Tensor) else None
    return {"seconds": seconds, "peak": peak, "loss": value}


def format_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--tokens", type=int, nargs="+", default=None, help="N (default: 1024 8192 16384 on CUDA, 256 1024 on CPU)"
    )
    parser.add_argument(
        "--hidden", type=int, default=None, help="student hidden size (default 2048 on CUDA, 256 on CPU)"
    )
    parser.add_argument("--teacher-hidden", type=int, default=None, help="teacher hidden size (default 2560 / 384)")
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary rows (default 151936 / 32768)")
    parser.add_argument(
        "--dtype", choices=["bfloat16", "float32"], default=None, help="default bfloat16 on CUDA, float32 on CPU"
    )
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk of ours (default: auto)")
    parser.add_argument("--masked", type=float, default=0.1, help="fraction of tokens with label -100")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["naive", "liger", "compiled"], help="rows to leave out"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    base = REAL if on_gpu else SMALL
    shapes = {
        "hidden": args.hidden or base["hidden"],
        "teacher_hidden": args.teacher_hidden or base["teacher_hidden"],
        "vocab": args.vocab or base["vocab"],
    }
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_gpu else "float32"))
    tokens = args.tokens or ([1024, 8192, 16384] if on_gpu else [256, 1024])

    methods = [("four-matmul floor", floor)]
    if "naive" not in args.skip:
        methods.append(("naive PyTorch", naive))
    if "liger" not in args.skip:
        methods.append(("Liger fused linear JSD", liger(device)))
    methods.append(("ours, eager", lambda x: ours(x, args.chunk_size, compile=False)))
    if "compiled" not in args.skip:
        methods.append(("ours, compiled", lambda x: ours(x, args.chunk_size, compile=True)))

    name = torch.cuda.get_device_name(device) if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{name}; {dtype}; student hidden {shapes['hidden']}, teacher hidden {shapes['teacher_hidden']}, "
        f"vocab {shapes['vocab']}; {args.masked:.0%} of labels ignored; T={TEMPERATURE}; "
        f"median of {args.repeats} after {args.warmup} warm-up\n"
    )
    print("| N | head | ms | × floor | extra peak | loss |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in tokens:
        x = make_inputs(n, shapes, dtype, device, args.masked, args.seed)
        floor_seconds = None
        for label, fn in methods:
            if isinstance(fn, str):
                print(f"| {n} | {label} | {fn} | | | |")
                continue
            row = measure(fn, x, device, args)
            if "note" in row:
                print(f"| {n} | {label} | {row['note']} | | | |")
                continue
            if floor_seconds is None:
                floor_seconds = row["seconds"]
            loss = "" if row["loss"] is None or math.isnan(row["loss"]) else f"{row['loss']:.5f}"
            print(
                f"| {n} | {label} | {row['seconds'] * 1e3:.1f} | {row['seconds'] / floor_seconds:.2f} "
                f"| {format_bytes(row['peak'])} | {loss} |",
                flush=True,
            )
        del x
        if on_gpu:
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
