"""A memory plan for a recipe on a given GPU: what the training state, activations, loss head and teacher take.

`plan(recipe, gpu, gpus)` reads the recipe's YAML (`base_model`,
`proofkd_teacher`, `sequence_len`, `micro_batch_size`,
`gradient_checkpointing`, `bf16`, `optimizer`, and for `rl: grpo` the `trl`
block), takes the models' shapes from their published configurations
(`proofkd.core.qwen3.PUBLISHED`) or a local `config.json`, counts their
parameters exactly on the meta device, and adds up per GPU:

- student weights, gradients and AdamW's two moments. Axolotl loads the
  model in bfloat16 when `bf16: true` and trains those weights directly (no
  float32 master copy); torch's AdamW keeps its moments in the parameter's
  dtype, so that is 2 + 2 + 2 x 2 = 8 bytes per parameter. An optimizer that
  keeps float32 moments takes 2 + 2 + 2 x 4 = 12; both rows are printed.
  The optimizer step adds one parameter-sized temporary (the foreach
  implementation's square root of the second moment), at a time when the
  activations are gone.
- activations: the tensors autograd saves, per decoder layer and token,
  counted from the layer's operations (`layer_activation_bytes`; checked
  against torch's saved-tensor hooks on the real-width slices by
  `bench/memory_plan.py`); with gradient checkpointing a layer keeps only its
  input and one layer is recomputed at a time.
- the loss head (Stage 1, `plugin/loss/chunked.py`): its float32 `[V, H]`
  weight gradient, the bfloat16 copy handed back in backward, the gradient of
  the hidden states, and `HEAD_CHUNK_BUFFERS` float32 `[chunk, V]` buffers
  (`auto_chunk_size`). On TRL's GRPO path (OPD) the student's completion
  logits and their log-softmax, bfloat16, are kept for backward instead.
- the teacher: bfloat16 weights, or 8-bit as bitsandbytes' LLM.int8 through
  transformers gives them: only `nn.Linear` layers are quantised (1 byte per
  weight plus a float32 scale per output row); the embeddings, norms, the
  output layer, and the experts of transformers' MoE blocks (stored as 3-D
  parameters, not `nn.Linear`) stay bfloat16. Its forward runs without
  gradients; its final hidden states, and its output weight on the student's
  GPU, feed the head.

The placements are the teacher on the student's GPU (bf16 or 8-bit), on a
second GPU, or behind a server (top-k over HTTP, nothing of it on the
training GPUs). A GPU's usable memory is its total less `RESERVE` (the CUDA
context and the allocator's fragmentation); "tight" means less than
`TIGHT_FRACTION` of it is left.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GiB = 2**30
MiB = 2**20

# Totals as nvidia-smi reports them.
GPUS = {"h100-80gb": 81559 * MiB, "h200-141gb": 143771 * MiB}
RESERVE = 2 * GiB
TIGHT_FRACTION = 0.05
# float32 [chunk, V] buffers alive at the chunked head's peak (student and teacher logits, their
# tempered log-softmaxes, the gradient, temporaries): 10, fitted to the eager head's peak at real width
# by bench/memory_plan.py (float32, CPU; see docs/memory.md).
HEAD_CHUNK_BUFFERS = 10
BF16 = 2


class PlanError(ValueError):
    """A recipe or model the plan cannot size."""


@dataclass(frozen=True)
class Shape:
    """What the plan needs of a model, from its config and a meta-device count of its parameters."""

    name: str
    layers: int
    hidden: int
    intermediate: int  # dense MLP width, or experts routed per token x expert width for MoE
    heads: int
    kv_heads: int
    head_dim: int
    vocab_rows: int
    experts: int  # 0 for a dense model
    params: int  # unique parameters (a tied head counted once)
    linear_params: int  # in nn.Linear layers other than the output layer: what LLM.int8 quantises
    linear_rows: int  # their output rows (one float32 scale each)
    tied: bool

    def weight_bytes(self, bytes_per_param: int = BF16) -> int:
        return self.params * bytes_per_param

    def int8_bytes(self) -> int:
        return self.linear_params + 4 * self.linear_rows + (self.params - self.linear_params) * BF16


def _config(name: str):
    from proofkd.core import embedded, qwen3

    if embedded.is_reference(name):
        slice_name, params = embedded.parse_reference(name)
        if slice_name not in qwen3.SLICES:
            raise PlanError(f"{name!r}: the plan knows the shapes of the Qwen3 slices only among proofkd: references")
        published, _variant, default_experts = qwen3.SLICES[slice_name]
        experts = int(params.get("experts", default_experts)) if default_experts else None
        return qwen3.published_config(published, layers=int(params.get("layers", qwen3.SLICE_LAYERS)), experts=experts)
    if name in qwen3.PUBLISHED or name in qwen3.ALIASES:
        return qwen3.published_config(name)
    if (Path(name) / "config.json").is_file():
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name)
    raise PlanError(
        f"no shape for {name!r}: give a local folder with config.json or one of {', '.join(qwen3.published_names())}"
    )


def model_shape(name: str) -> Shape:
    """The `Shape` of a published model, a `proofkd:` Qwen3 slice, or a local folder with a config.json."""
    import torch
    from torch import nn
    from transformers import AutoModelForCausalLM

    config = _config(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    output = model.get_output_embeddings()
    params = sum(p.numel() for p in model.parameters())
    linear_params = linear_rows = 0
    for module in model.modules():
        if type(module) is nn.Linear and module is not output:
            linear_params += module.weight.numel()
            linear_rows += module.out_features
    experts = getattr(config, "num_experts", 0) or 0
    per_token = config.num_experts_per_tok * config.moe_intermediate_size if experts else config.intermediate_size
    return Shape(
        name=name,
        layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        intermediate=per_token,
        heads=config.num_attention_heads,
        kv_heads=config.num_key_value_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
        vocab_rows=config.vocab_size,
        experts=experts,
        params=params,
        linear_params=linear_params,
        linear_rows=linear_rows,
        tied=bool(config.tie_word_embeddings),
    )


def layer_activation_bytes(shape: Shape, act: int = BF16) -> int:
    """Bytes autograd saves per token in one Qwen3 decoder layer (SDPA attention, training, `act`-byte activations).

    Per RMSNorm: its float32 input (4 x width), the input cast back (act x width), the
    inverse RMS (4 per row); per projection its input (act x width, shared by q, k,
    v and by gate, up); SDPA keeps q, k, v, its output and a float32 log-sum-exp per
    head; the MLP keeps gate, up, silu(gate) and their product. Rotary cos and sin
    are shared by all layers (`outside_activation_bytes`).
    """
    h, q, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    norms = 2 * ((4 + act) * h + 4) + (4 + act) * (q + kv) + 4 * (shape.heads + shape.kv_heads)
    projections = 2 * act * h  # the attention's and the MLP's input
    attention = act * (2 * q + 2 * kv) + 4 * shape.heads
    mlp = 4 * act * i
    if shape.experts:  # router logits and probabilities (float32), top-k weights
        mlp += 8 * shape.experts
    return norms + projections + attention + mlp


def outside_activation_bytes(shape: Shape, act: int = BF16) -> int:
    """Per token, outside the layers: the final norm's saved tensors, rotary cos/sin, the embedding's indices."""
    return (4 + act) * shape.hidden + 4 + 2 * act * shape.head_dim + 8


def checkpointed_layer_bytes(shape: Shape, act: int = BF16) -> int:
    """Per token and layer under gradient checkpointing: the layer's input."""
    return act * shape.hidden


def chunk_size(vocab: int) -> int:
    from proofkd.plugin.loss.chunked import auto_chunk_size

    return auto_chunk_size(vocab)


@dataclass
class Item:
    label: str
    bytes: int
    note: str = ""


@dataclass
class Plan:
    recipe: str
    gpu: str
    gpus: int
    student: Shape
    teacher: Shape | None
    tokens: int
    checkpointing: bool
    grpo: dict[str, Any]
    items: list[Item] = field(default_factory=list)
    placements: list[tuple[str, list[int], str]] = field(default_factory=list)

    def to_markdown(self) -> str:
        usable = GPUS[self.gpu] - RESERVE
        lines = [
            f"## Memory plan: {self.recipe} on {self.gpus} x {self.gpu}",
            "",
            f"student {self.student.name}: {self.student.params / 1e9:.3f}B parameters, {self.student.layers} layers; "
            + (
                f"teacher {self.teacher.name}: {self.teacher.params / 1e9:.3f}B parameters"
                if self.teacher
                else "no teacher"
            )
            + f"; {self.tokens} tokens per micro-batch; gradient checkpointing "
            + ("on" if self.checkpointing else "off"),
            "",
            "| item | GiB | how |",
            "|---|---:|---|",
        ]
        lines += [f"| {i.label} | {i.bytes / GiB:.2f} | {i.note} |" for i in self.items]
        lines += [
            "",
            f"usable per GPU: {usable / GiB:.1f} GiB ({GPUS[self.gpu] / GiB:.1f} GiB less {RESERVE / GiB:.0f} GiB "
            "for the CUDA context and fragmentation)",
            "",
            "| teacher placement | GPU 0 GiB | GPU 1 GiB | verdict |",
            "|---|---:|---:|---|",
        ]
        for label, per_gpu, verdict in self.placements:
            cells = [f"{b / GiB:.1f}" for b in per_gpu] + ["-"] * (2 - len(per_gpu))
            lines.append(f"| {label} | {cells[0]} | {cells[1]} | {verdict} |")
        return "\n".join(lines)

    def item(self, label: str) -> int:
        return next(i.bytes for i in self.items if i.label == label)


def verdict(per_gpu: list[int], gpu: str) -> str:
    usable = GPUS[gpu] - RESERVE
    worst = max(per_gpu)
    left = usable - worst
    if left < 0:
        return f"does not fit ({-left / GiB:.1f} GiB over)"
    if left < TIGHT_FRACTION * usable:
        return f"tight ({left / GiB:.1f} GiB left)"
    return f"fits ({left / GiB:.1f} GiB left)"


def load_recipe(recipe: str | Path) -> tuple[str, dict]:
    from proofkd.core.recipes import RecipeError, read_recipe

    try:
        path, cfg = read_recipe(recipe)
    except RecipeError as error:
        raise PlanError(str(error)) from None
    return path.name, cfg


def plan(recipe: str | Path, gpu: str, gpus: int = 1, *, student_shape: Shape | None = None) -> Plan:
    """The memory plan of `recipe` (a path or a shipped recipe's name) on `gpus` GPUs of kind `gpu`."""
    if gpu not in GPUS:
        raise PlanError(f"unknown GPU {gpu!r}; known: {', '.join(GPUS)}")
    if gpus < 1:
        raise PlanError(f"--gpus {gpus}: the plan needs at least one GPU")
    name, cfg = load_recipe(recipe)
    if not cfg.get("base_model"):
        raise PlanError(f"{name}: no base_model")
    student = student_shape or model_shape(str(cfg["base_model"]))
    teacher = model_shape(str(cfg["proofkd_teacher"])) if cfg.get("proofkd_teacher") else None
    act = BF16 if cfg.get("bf16") or cfg.get("fp16") else 4
    weight_bytes = act  # Axolotl loads the model in the training dtype
    grpo = dict(cfg.get("trl") or {}) if cfg.get("rl") else {}
    micro = int(cfg.get("micro_batch_size") or 1)
    if grpo:
        seq = int(cfg.get("sequence_len") or grpo.get("max_completion_length", 0))
    else:
        seq = int(cfg.get("sequence_len") or 2048)
    tokens = micro * seq
    ckpt = bool(cfg.get("gradient_checkpointing"))
    p = Plan(name, gpu, gpus, student, teacher, tokens, ckpt, grpo)
    s = student

    optimizer = str(cfg.get("optimizer") or "adamw_torch")
    moment_bytes = 1 if "8bit" in optimizer else weight_bytes
    p.items += [
        Item("student weights", s.weight_bytes(weight_bytes), f"{s.params:,} x {weight_bytes} B"),
        Item("student gradients", s.weight_bytes(weight_bytes), f"{s.params:,} x {weight_bytes} B"),
        Item(
            f"optimizer state ({optimizer})",
            2 * s.params * moment_bytes,
            f"two moments in the parameters' dtype ({moment_bytes} B), as torch's AdamW keeps them",
        ),
        Item("optimizer state if float32 moments", 2 * s.params * 4, "not used by the recipe: for comparison"),
        Item("optimizer step temporary", s.params * weight_bytes, "foreach sqrt of the second moment"),
    ]
    per_layer = layer_activation_bytes(s, act) * tokens
    outside = outside_activation_bytes(s, act) * tokens
    full = s.layers * per_layer + outside
    checkpointed = s.layers * checkpointed_layer_bytes(s, act) * tokens + per_layer + outside
    p.items += [
        Item("activations per layer", per_layer, f"{layer_activation_bytes(s, act):,} B/token x {tokens} tokens"),
        Item(
            "activations, no checkpointing" + (" (recipe)" if not ckpt else ""),
            full,
            f"{s.layers} layers + final norm",
        ),
        Item(
            "activations, gradient checkpointing" + (" (recipe)" if ckpt else ""),
            checkpointed,
            f"{s.layers} layer inputs + one layer recomputed + final norm",
        ),
    ]
    activations = checkpointed if ckpt else full

    if grpo:
        completion = int(grpo.get("max_completion_length") or seq)
        head = 2 * act * micro * completion * s.vocab_rows
        p.items.append(Item("loss head (TRL GRPO)", head, f"logits + log-softmax [{micro * completion}, V] kept, bf16"))
    else:
        chunk = chunk_size(s.vocab_rows)
        head = (
            4 * s.vocab_rows * s.hidden
            + weight_bytes * s.vocab_rows * s.hidden
            + act * tokens * s.hidden
            + HEAD_CHUNK_BUFFERS * 4 * min(chunk, tokens) * s.vocab_rows
        )
        p.items.append(
            Item(
                "loss head (chunked)",
                head,
                f"fp32 [V, H] grad + its bf16 copy + grad of hidden + {HEAD_CHUNK_BUFFERS} fp32 [{chunk}, V]",
            )
        )
    static = p.item("student weights") + p.item("student gradients") + 2 * s.params * moment_bytes
    student_peak = static + max(activations + head, p.item("optimizer step temporary"))
    if grpo and grpo.get("use_vllm") and grpo.get("vllm_mode", "server") == "colocate":
        share = float(grpo.get("vllm_gpu_memory_utilization", 0.3))
        vllm = int(share * GPUS[gpu])
        p.items.append(Item("vLLM colocated", vllm, f"trl vllm_gpu_memory_utilization {share} of the GPU"))
        student_peak += vllm
    p.items.append(
        Item("student total (peak)", student_peak, "weights + grads + moments + max(activations + head, step)")
    )

    if teacher is None:
        p.placements.append(("none", [student_peak], verdict([student_peak], gpu)))
        return p
    t = teacher
    t_inputs = act * tokens * t.hidden  # its final hidden states, handed to the head
    t_transient = layer_activation_bytes(t, act) * tokens  # one layer's tensors during its no-grad forward (a bound)
    t_out = t.vocab_rows * t.hidden * BF16
    p.items += [
        Item("teacher weights, bf16", t.weight_bytes(BF16), f"{t.params:,} x 2 B"),
        Item(
            "teacher weights, 8-bit",
            t.int8_bytes(),
            f"LLM.int8 on nn.Linear ({t.linear_params / 1e9:.2f}B params); the rest bf16"
            + (" (the experts included)" if t.experts else ""),
        ),
        Item("teacher forward", t_inputs + t_transient, "its final hidden states + one layer's tensors (no grad)"),
    ]
    teacher_bf16 = t.weight_bytes(BF16) + t_inputs + t_transient
    teacher_8bit = t.int8_bytes() + t_inputs + t_transient
    p.placements.append(("same GPU, bf16", [student_peak + teacher_bf16], ""))
    p.placements.append(("same GPU, 8-bit", [student_peak + teacher_8bit], ""))
    fp32_moments = student_peak + 2 * s.params * (4 - moment_bytes) + teacher_bf16
    p.placements.append(("same GPU, bf16, if the moments were float32", [fp32_moments], ""))
    if gpus >= 2:
        p.placements.append(("second GPU, bf16", [student_peak + t_out + t_inputs, teacher_bf16], ""))
    else:
        p.placements.append(("second GPU, bf16", [student_peak + t_out + t_inputs, teacher_bf16], "needs --gpus 2"))
    p.placements.append(("server (vLLM elsewhere)", [student_peak], ""))
    p.placements = [(label, per_gpu, why or verdict(per_gpu, gpu)) for label, per_gpu, why in p.placements]
    return p
