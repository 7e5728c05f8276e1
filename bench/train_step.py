"""One Stage-1 training step, broken down, against a plain SFT step of the same student.

    python bench/train_step.py --device cuda                   # Qwen3-1.7B student, Qwen3-4B teacher shapes, bf16
    python bench/train_step.py --device cpu --preset tiny      # a few small layers on a CPU (the default there)

Both models are randomly initialised from configurations of the real shapes
(`--preset real`: Qwen3-1.7B student, Qwen3-4B teacher, vocabulary 151936),
so nothing is downloaded; speed and memory do not depend on the weights. The
Stage-1 step is what `ProofKDTrainer.compute_loss` does per micro-batch: the
teacher runs without gradients to its final hidden states, the student runs
with its output head swapped for the proof-weighted KD head
(`proofkd.plugin.heads.head_replaced` + `proof_kd_loss`), backward, and an
AdamW step. The SFT step is the same student with its own head and Hugging
Face's cross-entropy over full logits, backward, and the same AdamW step.

Rows (each timed on its own: median of `--repeats` after `--warmup`):

* teacher forward: final hidden states, no gradients;
* student body forward + backward: the transformer without any output head
  (a trivial scalar of the final hidden states stands in for the loss);
* loss head forward + backward: `proof_kd_loss` on the student's final hidden
  states and output weight (detached from the body);
* Stage-1 step: teacher forward + student forward/backward with the KD head + optimizer step;
* SFT step: student forward/backward with full logits + optimizer step.

The last line checks the target: Stage-1 step <= (SFT step + teacher
forward) * 1.05. "extra peak" is the peak allocated during the call above
what existed before it (models, optimizer state, inputs); on CPU it is the
lower bound described in `bench/measure.py`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import GiB, MiB, extra_peak_bytes, is_out_of_memory, median_seconds  # noqa: E402

from proofkd.plugin.heads import final_hidden_states, head_replaced  # noqa: E402
from proofkd.plugin.loss import proof_kd_loss  # noqa: E402

QWEN3_1_7B = dict(
    hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8
)
QWEN3_4B = dict(
    hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8
)
PRESETS = {
    "real": dict(student=QWEN3_1_7B, teacher=QWEN3_4B, vocab=151936, head_dim=128, batch=4, seq=2048, dtype="bfloat16"),
    "tiny": dict(
        student=dict(
            hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
        ),
        teacher=dict(
            hidden_size=384, intermediate_size=1024, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2
        ),
        vocab=32768,
        head_dim=64,
        batch=2,
        seq=128,
        dtype="float32",
    ),
}
TEMPERATURE, CE_COEF, KD_COEF, PROOF_WEIGHT = 2.0, 0.55, 0.45, 2.5


def build(shape: dict, vocab: int, head_dim: int, layers: int | None, dtype: torch.dtype, device: torch.device):
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(
        **{**shape, **({"num_hidden_layers": layers} if layers else {})},
        vocab_size=vocab,
        head_dim=head_dim,
        max_position_embeddings=40960,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.to(device)


def make_batch(batch: int, seq: int, vocab: int, device: torch.device) -> dict:
    """Random tokens; the first quarter of each row is prompt (label -100); proof tokens in spans."""
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=g)
    labels = input_ids.clone()
    labels[:, : seq // 4] = -100
    positions = torch.arange(seq)
    proof_mask = ((positions // 16) % 2 == 1).long().expand(batch, seq).clone()
    proof_mask[labels == -100] = 0
    tensors = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels, proof_mask=proof_mask)
    return {k: v.to(device) for k, v in tensors.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="default: real on CUDA, tiny on CPU")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--student-layers", type=int, default=None, help="override the preset's layer count")
    parser.add_argument("--teacher-layers", type=int, default=None, help="override the preset's layer count")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None)
    parser.add_argument("--chunk-size", type=int, default=None, help="rows per chunk of the loss head (default: auto)")
    parser.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="compile the loss head (auto: the library default, off)",
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help="for the student, in both steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    preset_name = args.preset or ("real" if on_gpu else "tiny")
    preset = PRESETS[preset_name]
    dtype = getattr(torch, args.dtype or preset["dtype"])
    batch, seq = args.batch or preset["batch"], args.seq or preset["seq"]
    vocab = preset["vocab"]
    compile_head = {"auto": None, "on": True, "off": False}[args.compile]

    student = build(preset["student"], vocab, preset["head_dim"], args.student_layers, dtype, device)
    teacher = build(preset["teacher"], vocab, preset["head_dim"], args.teacher_layers, dtype, device).eval()
    teacher.requires_grad_(False)
    if args.gradient_checkpointing:
        student.gradient_checkpointing_enable()
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
    data = make_batch(batch, seq, vocab, device)
    flat_labels = data["labels"][:, 1:].reshape(-1)
    flat_proof = data["proof_mask"][:, 1:].reshape(-1)
    model_inputs = {"input_ids": data["input_ids"], "attention_mask": data["attention_mask"], "use_cache": False}

    def teacher_hidden():
        with torch.no_grad():
            hidden = final_hidden_states(teacher, **model_inputs)
        return hidden[:, :-1].reshape(-1, hidden.shape[-1])

    def head(hidden, weight, t_hidden):
        loss, _ = proof_kd_loss(
            hidden[:, :-1].reshape(-1, hidden.shape[-1]),
            weight,
            t_hidden,
            teacher.get_output_embeddings().weight,
            flat_labels,
            flat_proof,
            PROOF_WEIGHT,
            temperature=TEMPERATURE,
            ce_coef=CE_COEF,
            kd_coef=KD_COEF,
            chunk_size=args.chunk_size,
            compile=compile_head,
        )
        return loss

    def student_body():
        with head_replaced(student, lambda _, hidden: hidden.float().square().mean()):
            loss = student(**model_inputs).logits
        loss.backward()
        student.zero_grad(set_to_none=True)

    fixed = {}

    def loss_head_only():
        if "hidden" not in fixed:
            with torch.no_grad():
                fixed["hidden"] = final_hidden_states(student, **model_inputs)
            fixed["teacher"] = teacher_hidden()
            fixed["weight"] = student.get_output_embeddings().weight.detach().clone().requires_grad_()
        hidden = fixed["hidden"].detach().requires_grad_()
        fixed["weight"].grad = None
        head(hidden, fixed["weight"], fixed["teacher"]).backward()
        fixed["weight"].grad = None

    def stage1_step():
        t_hidden = teacher_hidden()
        with head_replaced(student, lambda module, hidden: head(hidden, module.weight, t_hidden)):
            loss = student(**model_inputs).logits
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sft_step():
        loss = student(**model_inputs, labels=data["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rows = [
        ("teacher forward", teacher_hidden),
        ("student body forward + backward", student_body),
        ("loss head forward + backward", loss_head_only),
        ("Stage-1 step (teacher + student with KD head + AdamW)", stage1_step),
        ("SFT step (student with full logits + AdamW)", sft_step),
    ]
    results = {}
    for label, fn in rows:
        try:
            seconds = median_seconds(fn, device, warmup=args.warmup, repeats=args.repeats)
            peak = extra_peak_bytes(fn, device)
            results[label] = (seconds, peak)
        except (RuntimeError, torch.OutOfMemoryError) as error:
            if not is_out_of_memory(error):
                raise
            optimizer.zero_grad(set_to_none=True)
            fixed.clear()
            if on_gpu:
                torch.cuda.empty_cache()
            results[label] = None

    name = torch.cuda.get_device_name(device) if on_gpu else f"CPU, {torch.get_num_threads()} threads"
    s_cfg, t_cfg = student.config, teacher.config
    print(
        f"{name}; {dtype}; preset {preset_name}: student {s_cfg.num_hidden_layers} layers x {s_cfg.hidden_size}, "
        f"teacher {t_cfg.num_hidden_layers} layers x {t_cfg.hidden_size}, vocab {vocab}; batch {batch} x {seq} tokens; "
        f"loss head compile={args.compile}; median of {args.repeats} after {args.warmup} warm-up\n"
    )
    sft = results[rows[-1][0]]
    print("| part | ms | × SFT step | extra peak |")
    print("|---|---:|---:|---:|")
    for label, _ in rows:
        row = results[label]
        if row is None:
            print(f"| {label} | out of memory | | |")
            continue
        seconds, peak = row
        ratio = f"{seconds / sft[0]:.2f}" if sft else ""
        print(f"| {label} | {seconds * 1e3:.1f} | {ratio} | {format_bytes(peak)} |")
    stage1, teacher_fwd = results[rows[3][0]], results[rows[0][0]]
    if stage1 and sft and teacher_fwd:
        budget = sft[0] + teacher_fwd[0]
        verdict = "meets" if stage1[0] <= 1.05 * budget else "misses"
        print(
            f"\nStage-1 step / (SFT step + teacher forward) = {stage1[0] / budget:.3f} "
            f"({verdict} the target of at most 1.05)"
        )


def format_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


if __name__ == "__main__":
    main()
