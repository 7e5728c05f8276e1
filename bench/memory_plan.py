"""Hold `proofkd plan`'s figures against tensors measured on the real-width Qwen3 slices, on the CPU.

    python bench/memory_plan.py [--tokens 64]

For each slice (`proofkd:qwen3-1.7b-slice`, `proofkd:qwen3-4b-base-slice`,
`proofkd:qwen3-30b-a3b-slice`; materialised once): parameter bytes as loaded
against the plan's meta-device count; for the dense ones, the bytes autograd
saves per decoder layer during a bf16 training forward (torch's saved-tensor
hooks, each storage counted once, parameters excluded) against
`layer_activation_bytes`, with and without gradient checkpointing; and the
chunked loss head's peak tensor bytes at real width (`LiveTensorBytes`)
against the plan's head figure. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from measure import LiveTensorBytes  # noqa: E402

from proofkd.core import embedded  # noqa: E402
from proofkd.plugin import plan as mp  # noqa: E402

SLICES = ["proofkd:qwen3-1.7b-slice", "proofkd:qwen3-4b-base-slice", "proofkd:qwen3-30b-a3b-slice"]


def saved_bytes(model, tokens: int, checkpointing: bool) -> dict[str, int]:
    """Bytes of the storages autograd saves, by decoder layer ("layerN") and outside the layers."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    current, seen, sums = ["outside"], set(), {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in params and key not in seen and key != 0:
            seen.add(key)
            sums[current[0]] = sums.get(current[0], 0) + t.untyped_storage().nbytes()
        return t

    hooks = []
    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, f"layer{i}")))
        hooks.append(layer.register_forward_hook(lambda m, a, o: current.__setitem__(0, "outside")))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    ids = torch.randint(0, 151_000, (1, tokens), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.model(input_ids=ids).last_hidden_state.float().sum()
    for h in hooks:
        h.remove()
    if checkpointing:
        model.gradient_checkpointing_disable()
    return sums


def head_peak(shape: mp.Shape, tokens: int) -> tuple[int, int]:
    """Measured peak tensor bytes of the chunked Stage-1 head (float32: bf16 matmuls crawl on CPUs; teacher of
    the same width), and the plan's figure for float32 (no bf16 copy of the weight gradient)."""
    from proofkd.plugin.loss import proof_kd_loss

    g = torch.Generator().manual_seed(0)
    h, v = shape.hidden, shape.vocab_rows
    hs = torch.randn(tokens, h, generator=g).requires_grad_()
    ws = (torch.randn(v, h, generator=g) * h**-0.5).requires_grad_()
    ht = torch.randn(tokens, h, generator=g)
    wt = torch.randn(v, h, generator=g) * h**-0.5
    labels = torch.randint(0, 151_669, (tokens,), generator=g)
    proof = (torch.rand(tokens, generator=g) < 0.5).long()
    with LiveTensorBytes() as probe:
        loss, _ = proof_kd_loss(hs, ws, ht, wt, labels, proof, 2.0, compile=False)
        loss.backward()
    chunk = mp.chunk_size(v)
    # float32: the weight gradient is handed back as it is (no bf16 copy); grads of hs and ws are new tensors
    planned = 4 * v * h + 4 * tokens * h + mp.HEAD_CHUNK_BUFFERS * 4 * min(chunk, tokens) * v
    return probe.peak, planned


def pct(measured: int, planned: int) -> str:
    return f"{100 * (planned - measured) / measured:+.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="sequence length of the measured forward")
    parser.add_argument("--head-tokens", type=int, default=416, help="tokens through the loss head (2 chunks)")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    rows = []
    for ref in SLICES:
        shape = mp.model_shape(ref)
        model = AutoModelForCausalLM.from_pretrained(embedded.resolve(ref), dtype=torch.bfloat16)
        loaded = sum(p.numel() * p.element_size() for p in model.parameters())
        rows.append((ref, "parameter bytes (bf16)", loaded, shape.weight_bytes(), pct(loaded, shape.weight_bytes())))
        if shape.experts:
            del model
            continue
        t = args.tokens
        full = saved_bytes(model, t, checkpointing=False)
        planned_layer = mp.layer_activation_bytes(shape) * t
        for name in sorted(k for k in full if k.startswith("layer")):
            rows.append(
                (ref, f"saved by {name}, {t} tokens", full[name], planned_layer, pct(full[name], planned_layer))
            )
        planned_out = mp.outside_activation_bytes(shape) * t
        rows.append(
            (ref, f"saved outside layers, {t} tokens", full["outside"], planned_out, pct(full["outside"], planned_out))
        )
        ckpt = saved_bytes(model, t, checkpointing=True)
        # the checkpoint saves a layer's inputs before the layer's own hooks run: count all but the outside part
        ckpt_layers = sum(ckpt.values()) - full["outside"]
        planned_ckpt = shape.layers * mp.checkpointed_layer_bytes(shape) * t
        rows.append(
            (
                ref,
                f"saved by all layers, checkpointed, {t} tokens",
                ckpt_layers,
                planned_ckpt,
                pct(ckpt_layers, planned_ckpt),
            )
        )
        if ref == SLICES[0]:
            measured, planned = head_peak(shape, args.head_tokens)
            rows.append(
                (ref, f"loss head peak (fp32), {args.head_tokens} tokens", measured, planned, pct(measured, planned))
            )
        del model

    print("| model | quantity | measured bytes | plan bytes | plan error |")
    print("|---|---|---:|---:|---:|")
    for ref, what, measured, planned, error in rows:
        print(f"| {ref} | {what} | {measured:,} | {planned:,} | {error} |")


if __name__ == "__main__":
    main()
