"""The online teacher: one interface, one implementation per backend, one loading path, one compatibility check.

What a teacher gives a batch (`Teacher`):

- `targets(input_ids, attention_mask) -> TeacherTargets`: what the Stage-1
  loss needs, per predicted token, already shifted and flattened: row i is
  the teacher's view of the token the student predicts from position i.
  Either the teacher's final hidden states and its full output weight (the
  KL runs over the whole vocabulary) or its top-k ids and log-probs (the KL
  runs over those, with the tail as `proofkd_teacher_topk_tail` says);
- `topk_by_position(input_ids, attention_mask, k)`: the teacher's top-k
  ids and log-probs `[B, L, k]` over the token at each position, given what
  precedes it (what a teacher cache stores);
- `score(input_ids, attention_mask, completion_len, topk) -> TokenScores`:
  OPD's view, the log-probabilities of the sampled completion tokens;
- `vocab_rows`: the rows of the teacher's output layer, or None when only
  its top-k is seen (a server; the KL then uses the student's rows).

Backends: `InProcessTeacher` (here), `ServerTeacher`
(`proofkd.plugin.teacher_server`) and `CachedTeacher` (the top-k stored by
`proofkd teacher cache`, `proofkd.plugin.teacher_cache`). `load_teacher(cfg, ...)`
picks one from `proofkd_teacher_cache` and `proofkd_teacher_server`. Compatibility is checked in two places only, by
the two plugins alike: `check_teacher_tokenizer(cfg)` before the student
loads (the tokenizers must be one), and `kl_vocab_rows(teacher, ...)` once
both models are there (the vocabulary rows the KL runs over).

The in-process teacher sits on its own device and dtype. Placement follows the
launch: one process puts it on `proofkd_teacher_device` (by default the
student's device); under a multi-process launch each rank gets its own copy
on its own device (DDP), or the teacher is sharded like the student (FSDP via
accelerate; ZeRO-3 through a DeepSpeed inference engine). The teacher's output
weight is kept as one full, frozen tensor on the student's device, because
the loss head needs all of it in every chunk.

Vocabulary: student and teacher must share a tokenizer. Their embedding
matrices may still have different numbers of rows (Qwen3 pads 151,669 tokens
to 151,936 rows); the KL then runs over the rows both have, which must cover
every real token.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from proofkd.core.logs import get_logger
from proofkd.plugin.heads import final_hidden_states, output_head, verify_linear_head
from proofkd.plugin.logprobs import TokenScores, token_log_probs

LOG = get_logger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class TeacherMismatchError(ValueError):
    """Teacher and student cannot be distilled into one another as configured."""


class TeacherOutputError(RuntimeError):
    """The teacher gave NaN or inf where the loss would read it."""


@dataclass(frozen=True)
class TeacherTargets:
    """The teacher's side of the Stage-1 loss for one batch, one row per predicted token (shifted, flattened).

    Row i belongs to the token the student predicts from position i (the
    label at i + 1). Exactly one form is set:

    - full vocabulary: `hidden` `[N, H_t]` and `weight` `[V_t, H_t]`, the
      teacher's final hidden states and output weight (logits = hidden @ weight^T);
    - top-k: `topk_ids` and `topk_logps` `[N, k]`, the teacher's k most likely
      tokens and their log-probabilities (-inf where it has none, e.g. padding).
    """

    hidden: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    topk_logps: torch.Tensor | None = None

    def __post_init__(self):
        full = self.hidden is not None and self.weight is not None
        topk = self.topk_ids is not None and self.topk_logps is not None
        partial = any(t is not None for t in (self.hidden, self.weight, self.topk_ids, self.topk_logps))
        if full == topk or not partial:
            raise ValueError("TeacherTargets holds either hidden and weight, or topk_ids and topk_logps")

    @property
    def topk(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`(topk_ids, topk_logps)` for the loss's `teacher_topk`, or None for the full-vocabulary form."""
        return None if self.topk_ids is None else (self.topk_ids, self.topk_logps)


def topk_targets(ids: torch.Tensor, logps: torch.Tensor) -> TeacherTargets:
    """`topk_by_position`'s `[B, L, k]` as targets: position j + 1 holds the token predicted from j."""
    k = ids.shape[-1]
    return TeacherTargets(topk_ids=ids[:, 1:].reshape(-1, k), topk_logps=logps[:, 1:].reshape(-1, k))


def unusable_logps(logps: torch.Tensor) -> torch.Tensor:
    """Where top-k log-probs are NaN or +inf; -inf is an unused slot and allowed."""
    return torch.isnan(logps) | (logps == torch.inf)


def check_finite(targets: TeacherTargets, read: torch.Tensor, row_length: int, where: str) -> None:
    """Raise `TeacherOutputError` if the teacher's output is NaN or inf at a token the loss reads.

    `read` marks those tokens in the flattened `[rows * row_length]` order of
    `targets`; -inf in the top-k log-probs is an unused slot and allowed.
    """
    if targets.hidden is not None:
        bad = ~torch.isfinite(targets.hidden).all(-1)
    else:
        bad = unusable_logps(targets.topk_logps).any(-1)
    bad = bad & read
    if not bool(bad.any()):
        return
    row, position = divmod(int(bad.nonzero()[0, 0]), row_length)
    raise TeacherOutputError(
        f"{where}: the teacher's output is NaN or inf for the token predicted at row {row}, position {position} of "
        f"the micro-batch ({int(bad.sum())} such tokens), so training stops rather than learn from it. A teacher in "
        "float16 can overflow: set proofkd_teacher_dtype: bfloat16 or float32; for a server, check the model it serves"
    )


class Teacher(ABC):
    """What a teacher gives a batch; one subclass per backend (see the module docstring)."""

    @property
    @abstractmethod
    def vocab_rows(self) -> int | None:
        """Rows of the teacher's output layer, or None when only its top-k is seen (the KL uses the student's)."""

    @abstractmethod
    def targets(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> TeacherTargets:
        """Stage 1: the teacher's view of every predicted token of the batch, on `input_ids`' device."""

    @abstractmethod
    def topk_by_position(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, topk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k ids and log-probs `[B, L, k]` over the token at each position given what precedes it; -inf log-probs
        at padding and at each row's first real token."""

    @abstractmethod
    def score(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_len: int, topk: int = 0
    ) -> TokenScores:
        """OPD: log-probabilities `[B, T]` of the last `completion_len` tokens of each row (and their top-k)."""

    def describe(self) -> str:
        """One line for the log: where the teacher is."""
        return type(self).__name__

    def counters(self) -> dict[str, float]:
        """Running totals the training log reports (a server's failed attempts, say); none by default."""
        return {}


def load_teacher(cfg, accelerator, student_device: torch.device, tokenizer=None) -> Teacher:
    """The teacher a recipe describes: its cache if `proofkd_teacher_cache` is set (checked against the run's
    `tokenizer` and settings), else a client of `proofkd_teacher_server` if set, else the model in process."""
    if cfg.get("proofkd_teacher_cache"):
        from proofkd.plugin.teacher_cache import CachedTeacher, CacheKey

        teacher = CachedTeacher.open(cfg.proofkd_teacher_cache, CacheKey.from_cfg(cfg, tokenizer))
    elif cfg.proofkd_teacher_server:
        from proofkd.plugin.teacher_server import ServerTeacher

        teacher = ServerTeacher.from_cfg(cfg)
    else:
        teacher = InProcessTeacher.load(TeacherSpec.from_cfg(cfg), cfg, accelerator, student_device)
    LOG.info("%s", teacher.describe())
    return teacher


@dataclass(frozen=True)
class TeacherSpec:
    name_or_path: str
    device: str = "auto"
    dtype: str = "auto"
    load_in_8bit: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_cfg(cls, cfg) -> TeacherSpec:
        """The in-process teacher a recipe's `proofkd_teacher*` keys describe."""
        return cls(
            name_or_path=cfg.proofkd_teacher,
            device=cfg.proofkd_teacher_device,
            dtype=cfg.proofkd_teacher_dtype,
            load_in_8bit=cfg.proofkd_teacher_load_in_8bit,
            kwargs=dict(cfg.proofkd_teacher_kwargs or {}),
        )


def resolve_dtype(spec_dtype: str, cfg) -> torch.dtype:
    """'auto' follows the run: bf16 if `bf16`, fp16 if `fp16`, else float32."""
    if spec_dtype != "auto":
        return _DTYPES[spec_dtype]
    if cfg.bf16 is True or cfg.bf16 == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if cfg.fp16:
        return torch.float16
    return torch.float32


def resolve_device(spec_device: str, training_device: torch.device, world_size: int) -> torch.device:
    if spec_device == "auto":
        return training_device
    device = torch.device(spec_device)
    if world_size > 1 and device != training_device:
        LOG.warning(
            "proofkd_teacher_device=%s under %d processes: every rank puts its teacher there; "
            "use 'auto' to give each rank its own device",
            spec_device,
            world_size,
        )
    return device


def check_same_tokenizer(student_tokenizer, teacher_tokenizer) -> None:
    """Raise `TeacherMismatchError` unless both tokenizers map the same tokens to the same ids."""
    s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if s_vocab == t_vocab:
        return
    s_pairs, t_pairs = set(s_vocab.items()), set(t_vocab.items())
    differing = sorted(s_pairs ^ t_pairs, key=lambda kv: kv[1])
    examples = ", ".join(f"{tok!r}->{idx}" for tok, idx in differing[:5])
    head = (
        f"teacher and student tokenizers differ ({len(s_vocab)} vs {len(t_vocab)} tokens; "
        f"{len(differing)} (token, id) pairs are not shared, e.g. {examples}). "
    )
    if t_pairs < s_pairs:  # the teacher's tokenizer plus tokens the student's adds
        raise TeacherMismatchError(
            head + f"The student's tokenizer is the teacher's plus {len(s_pairs - t_pairs)} added tokens (the "
            "recipe's special_tokens or tokens, or its tokenizer_config), for which the teacher has no trained "
            "logits: add the same tokens to the teacher's tokenizer, or remove them from the recipe"
        )
    if s_pairs < t_pairs:  # the student's tokenizer plus tokens the teacher's adds
        extra = sorted(t_pairs - s_pairs, key=lambda kv: kv[1])
        raise TeacherMismatchError(
            head + f"The teacher's tokenizer is the student's plus {len(extra)} added tokens (ids {extra[0][1]} to "
            f"{extra[-1][1]}), which the student cannot predict: add them to the student through the recipe's "
            "tokens: (or special_tokens:) list, which also resizes its embeddings, or use the teacher's tokenizer "
            "without them"
        )
    raise TeacherMismatchError(
        head + "Logit distillation needs one tokenizer: pick a teacher from the student's model family"
    )


def shared_vocab_rows(tokens: int, student_rows: int, teacher_rows: int) -> int:
    """The vocabulary rows the KL runs over (the first min of both); raise if they miss a real token."""
    shared_rows = min(student_rows, teacher_rows)
    if shared_rows < tokens:
        raise TeacherMismatchError(
            f"the tokenizer has {tokens} tokens but the student's output layer has {student_rows} rows and the "
            f"teacher's {teacher_rows}: some token ids have no logit. Resize the embeddings of the smaller model"
        )
    if student_rows != teacher_rows:
        LOG.info(
            "student has %d vocabulary rows and teacher %d (tokenizer: %d tokens); the KL uses the first %d",
            student_rows,
            teacher_rows,
            tokens,
            shared_rows,
        )
    return shared_rows


def check_compatible(student_tokenizer, teacher_tokenizer, student_rows: int, teacher_rows: int) -> int:
    """Raise `TeacherMismatchError` unless the two can be distilled; return the KL's vocabulary rows."""
    check_same_tokenizer(student_tokenizer, teacher_tokenizer)
    return shared_vocab_rows(len(student_tokenizer), student_rows, teacher_rows)


def check_teacher_tokenizer(cfg, student_tokenizer, teacher_tokenizer=None) -> None:
    """Before the student loads: refuse a teacher (`proofkd_teacher`) whose tokenizer is not the student's.

    With a teacher server, `proofkd_teacher` names the served model's
    tokenizer; if only `proofkd_teacher_server_model` is set, nothing names
    it and nothing is checked.
    """
    if not cfg.proofkd_teacher:
        return
    if teacher_tokenizer is None:
        from transformers import AutoTokenizer

        teacher_tokenizer = AutoTokenizer.from_pretrained(cfg.proofkd_teacher)
    check_same_tokenizer(student_tokenizer, teacher_tokenizer)


def kl_vocab_rows(teacher: Teacher, student_tokenizer, student_rows: int) -> int:
    """Once both models are loaded: the vocabulary rows the KL runs over.

    An in-process teacher: the rows both output layers have, which must
    cover every token. A server (`vocab_rows` None): the student's rows, the
    teacher's top-k ids being ids of the shared tokenizer.
    """
    if teacher.vocab_rows is None:
        return student_rows
    return shared_vocab_rows(len(student_tokenizer), student_rows, teacher.vocab_rows)


class InProcessTeacher(Teacher):
    """A frozen causal LM in this process: its final hidden states and its full output weight."""

    def __init__(self, model: nn.Module, output_weight: torch.Tensor, device: torch.device):
        self.model = model
        self.output_weight = output_weight
        self.device = device

    @property
    def vocab_rows(self) -> int:
        return self.output_weight.shape[0]

    def describe(self) -> str:
        return f"teacher in process on {self.device}, {self.vocab_rows} vocabulary rows"

    @classmethod
    def load(cls, spec: TeacherSpec, cfg, accelerator, student_device: torch.device) -> InProcessTeacher:
        from transformers import AutoModelForCausalLM

        device = resolve_device(spec.device, student_device, accelerator.num_processes)
        dtype = resolve_dtype(spec.dtype, cfg)
        kwargs = dict(spec.kwargs)
        kwargs.setdefault("dtype", dtype)
        if spec.load_in_8bit:
            if device.type != "cuda":
                raise TeacherMismatchError(
                    f"proofkd_teacher_load_in_8bit needs a CUDA device; the teacher would be on {device}"
                )
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
            kwargs["device_map"] = {"": device.index or 0}
        LOG.info("loading teacher %s (%s) for %s", spec.name_or_path, dtype, device)
        model = AutoModelForCausalLM.from_pretrained(spec.name_or_path, **kwargs)
        model.eval().requires_grad_(False)
        if not spec.load_in_8bit:
            model.to(device)
        verify_linear_head(model, _probe_ids(model, device))
        # A full copy of the output weight on the student's device, taken before any sharding.
        weight = output_head(model).weight.detach().to(student_device)
        model = _shard_like_student(model, accelerator)
        return cls(model, weight, device)

    @torch.no_grad()
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Final hidden states `[batch, seq, hidden]` on the student's device."""
        out_device = input_ids.device
        inputs = {"input_ids": input_ids.to(self.device), "use_cache": False}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask.to(self.device)
        return final_hidden_states(self.model, **inputs).to(out_device)

    @torch.no_grad()
    def targets(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> TeacherTargets:
        """The hidden states at positions `[:, :-1]` (each predicts the next token), flattened, and the weight."""
        hidden = self.hidden_states(input_ids, attention_mask)
        return TeacherTargets(hidden=hidden[:, :-1].reshape(-1, hidden.shape[-1]), weight=self.output_weight)

    @torch.no_grad()
    def score(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_len: int, topk: int = 0
    ) -> TokenScores:
        """Log-probabilities `[B, T]` of the last `completion_len` tokens of each row (and their top-k)."""
        hidden = self.hidden_states(input_ids, attention_mask)
        positions = hidden[:, -completion_len - 1 : -1]
        targets = input_ids[:, -completion_len:]
        scores = token_log_probs(
            positions.reshape(-1, positions.shape[-1]), self.output_weight, targets.reshape(-1), topk=topk
        )
        return scores.reshape(*targets.shape)

    @torch.no_grad()
    def topk_by_position(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, topk: int, chunk_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k of each position's next token, from `token_log_probs` (float32, in row chunks)."""
        batch, length = input_ids.shape
        weight = self.output_weight
        hidden = self.hidden_states(input_ids, attention_mask)[:, :-1].to(weight.device)
        scores = token_log_probs(
            hidden.reshape(-1, hidden.shape[-1]),
            weight,
            input_ids[:, 1:].reshape(-1).to(weight.device),
            topk=topk,
            chunk_size=chunk_size,
        )
        ids = scores.topk_ids.reshape(batch, length - 1, topk)
        logps = scores.topk_logps.reshape(batch, length - 1, topk)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        seen = (mask[:, 1:] * mask[:, :-1]).bool().to(weight.device)
        logps = logps.masked_fill(~seen[..., None], -torch.inf)
        pad = torch.zeros(batch, 1, topk, dtype=torch.long, device=weight.device)
        ids = torch.cat([pad, ids], 1)
        logps = torch.cat([pad.float() - torch.inf, logps], 1)
        return ids.to(input_ids.device), logps.to(input_ids.device)


def _probe_ids(model: nn.Module, device: torch.device) -> torch.Tensor:
    rows = output_head(model).weight.shape[0]
    return torch.arange(1, 9, device=device)[None] * 7 % max(rows, 1)


def _shard_like_student(model: nn.Module, accelerator) -> nn.Module:
    """Wrap the teacher for the launch's distributed mode (a no-op for one process or DDP)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return accelerator.prepare_model(model, evaluation_mode=True)
    if kind == DistributedType.DEEPSPEED:
        return _deepspeed_inference_engine(model, accelerator)
    return model


def _deepspeed_inference_engine(model: nn.Module, accelerator) -> nn.Module:
    """ZeRO-3 shards the teacher's weights across ranks; stages 1-2 leave each rank a full copy."""
    import deepspeed

    config = accelerator.state.deepspeed_plugin.deepspeed_config
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage != 3:
        return model
    inference = {
        "train_micro_batch_size_per_gpu": config.get("train_micro_batch_size_per_gpu", 1),
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
        "bf16": config.get("bf16", {"enabled": False}),
        "fp16": config.get("fp16", {"enabled": False}),
    }
    engine, *_ = deepspeed.initialize(model=model, config=inference)
    engine.eval()
    return engine
