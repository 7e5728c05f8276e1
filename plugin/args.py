"""The plugins' config keys, validated by Axolotl together with the rest of the YAML.

Axolotl merges these models into its own config model, so the validators here
see the whole config: that is how options a plugin cannot honour (sample
packing, say) are refused with the key and the fix named, before any model
is loaded. `TeacherArgs` holds the keys both plugins share.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from proofkd.core.templates import FINAL_ANSWER_MARKER, PROOF_MARKER


class TeacherArgs(BaseModel):
    """Where the teacher comes from: the keys Stage-1 distillation and OPD share."""

    proofkd_teacher: str | None = Field(
        default=None,
        description="Teacher model: Hub id, local path, or a proofkd: embedded reference.",
    )
    proofkd_teacher_device: str = Field(
        default="auto",
        description="'auto' (each rank's training device), 'cpu', 'cuda', or 'cuda:N'.",
    )
    proofkd_teacher_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="'auto' follows the run's precision (bf16 / fp16 / fp32)."
    )
    proofkd_teacher_load_in_8bit: bool = Field(
        default=False, description="Load the teacher in 8-bit with bitsandbytes (CUDA only)."
    )
    proofkd_teacher_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword arguments for the teacher's from_pretrained, "
        "e.g. {experts_implementation: grouped_mm} for MoE teachers.",
    )
    proofkd_teacher_server: str | None = Field(
        default=None,
        description="Base URL of an OpenAI-compatible server (vLLM) serving the teacher, e.g. http://host:8000/v1. "
        "OPD reads the teacher's log-probability of each sampled token; Stage 1 its top-k at each position.",
    )
    proofkd_teacher_server_model: str | None = Field(
        default=None, description="The name the server knows the teacher by (default: proofkd_teacher)."
    )
    proofkd_teacher_server_timeout: float = Field(default=120.0, description="Seconds to wait for one request.")
    proofkd_teacher_server_retries: int = Field(default=3, description="Attempts per request before giving up.")
    proofkd_teacher_server_topk: int = Field(
        default=20,
        description="Stage 1 with a teacher server: the KL runs over the teacher's top-k tokens at each position, "
        "renormalised (vLLM serves up to its --max-logprobs, 20 by default).",
    )

    @field_validator("proofkd_teacher_device")
    @classmethod
    def _device(cls, value: str) -> str:
        head, _, index = value.partition(":")
        if head not in ("auto", "cpu", "cuda", "mps", "xpu") or (index and not index.isdigit()):
            raise ValueError(f"proofkd_teacher_device={value!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return value

    @field_validator("proofkd_teacher_server_timeout", "proofkd_teacher_server_retries", "proofkd_teacher_server_topk")
    @classmethod
    def _positive(cls, value: float, info) -> float:
        if value <= 0:
            raise ValueError(f"{info.field_name} must be > 0, got {value}")
        return value


class ProofKDArgs(TeacherArgs):
    """Keys of `proofkd.plugin.ProofKDPlugin` (all prefixed `proofkd_`)."""

    proofkd_temperature: float = Field(default=2.0, description="Softmax temperature T of the KL term.")
    proofkd_ce_coef: float = Field(default=0.55, description="Weight of the proof-weighted CE in the loss.")
    proofkd_kd_coef: float = Field(default=0.45, description="Weight of T^2 * KL in the loss.")
    proofkd_proof_weight_start: float = Field(default=2.5, description="CE weight of derivation tokens at step 0.")
    proofkd_proof_weight_end: float = Field(default=1.5, description="CE weight of derivation tokens at the last step.")
    proofkd_proof_weight_schedule: Literal["linear", "cosine", "constant"] = Field(
        default="linear", description="How the proof weight moves from start to end over the optimizer steps."
    )
    proofkd_proof_start_marker: str = Field(default=PROOF_MARKER, description="Marker before the derivation.")
    proofkd_proof_end_marker: str = Field(default=FINAL_ANSWER_MARKER, description="Marker after the derivation.")
    proofkd_ce_normalization: Literal["weights", "tokens"] = Field(
        default="weights",
        description="Divide the weighted CE by the sum of token weights (a weighted mean) or by the token count.",
    )
    proofkd_chunk_size: int | None = Field(
        default=None, description="Tokens per loss chunk; default keeps each [chunk, vocab] buffer near 128 MiB."
    )
    proofkd_compile_loss_head: bool = Field(
        default=False,
        description="Run the loss head's per-chunk arithmetic through torch.compile (falls back to eager on failure).",
    )

    @field_validator("proofkd_temperature")
    @classmethod
    def _temperature(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"proofkd_temperature must be > 0, got {value}; the published recipe uses 2.0")
        return value

    @field_validator("proofkd_ce_coef", "proofkd_kd_coef", "proofkd_proof_weight_start", "proofkd_proof_weight_end")
    @classmethod
    def _non_negative(cls, value: float, info) -> float:
        if value < 0:
            raise ValueError(f"{info.field_name} must be >= 0, got {value}")
        return value

    @field_validator("proofkd_chunk_size")
    @classmethod
    def _chunk(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"proofkd_chunk_size must be a positive number of tokens, got {value}; or leave it unset")
        return value

    @model_validator(mode="before")
    @classmethod
    def _whole_config(cls, data: Any) -> Any:
        if isinstance(data, dict):
            _raise_if(_stage1_problems(data))
        return data


class OPDArgs(TeacherArgs):
    """Keys of `proofkd.plugin.OPDPlugin`: on-policy distillation on Axolotl's GRPO path."""

    proofkd_opd_estimator: Literal["k1", "k2", "k3"] = Field(
        default="k1",
        description="Per-token estimate of the reverse KL whose negative is the advantage: "
        "k1 = log p_s - log p_t; k2 = (log p_s - log p_t)^2 / 2; k3 = exp(log p_t - log p_s) - (log p_t - log p_s) - 1.",
    )
    proofkd_opd_clamp: float = Field(default=10.0, description="Per-token estimates are clamped to [-clamp, clamp].")
    proofkd_opd_advantage_from: Literal["current", "rollout"] = Field(
        default="current",
        description="Student log-probs of the estimate: the policy being updated (current), or the sampling "
        "policy's, fixed per rollout (rollout). They agree on each rollout's first optimizer step.",
    )
    proofkd_opd_coef: float = Field(default=1.0, description="Weight of the distillation policy-gradient loss.")
    proofkd_opd_task_coef: float = Field(
        default=0.0, description="Weight of a second clipped loss on the task reward's group-normalised advantage."
    )
    proofkd_opd_dual_clip: float | None = Field(
        default=3.0, description="Dual-clip bound c on the ratio for negative advantages (PPO dual clip); none: off."
    )
    proofkd_opd_topk: int = Field(default=16, description="k of the top-k overlap-mass diagnostic (0 turns it off).")

    @field_validator("proofkd_opd_clamp")
    @classmethod
    def _clamp(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"proofkd_opd_clamp must be > 0, got {value}; the published recipe uses 10")
        return value

    @field_validator("proofkd_opd_coef", "proofkd_opd_task_coef", "proofkd_opd_topk")
    @classmethod
    def _non_negative(cls, value: float, info) -> float:
        if value < 0:
            raise ValueError(f"{info.field_name} must be >= 0, got {value}")
        return value

    @field_validator("proofkd_opd_dual_clip")
    @classmethod
    def _dual_clip(cls, value: float | None) -> float | None:
        if value is not None and value <= 1:
            raise ValueError(f"proofkd_opd_dual_clip must be > 1 (it bounds ratios above 1), got {value}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _whole_config(cls, data: Any) -> Any:
        if isinstance(data, dict):
            _raise_if(_opd_problems(data))
        return data


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise ValueError("proofkd cannot run this config:\n- " + "\n- ".join(problems))


def _teacher_problems(cfg: dict, needed: bool, alternative: str) -> list[str]:
    get = cfg.get
    problems = []
    if needed and not (get("proofkd_teacher") or get("proofkd_teacher_server")):
        problems.append(f"proofkd_teacher is not set: name the teacher model (Hub id or path), {alternative}")
    if get("proofkd_teacher_load_in_8bit") and get("proofkd_teacher_device", "auto") == "cpu":
        problems.append("proofkd_teacher_load_in_8bit needs a CUDA device; set proofkd_teacher_device to cuda or auto")
    return problems


def _stage1_problems(cfg: dict) -> list[str]:
    """Whole-config checks of Stage-1 distillation: each message names the key and what to do."""
    get = cfg.get
    ce = get("proofkd_ce_coef", 0.55)
    kd = get("proofkd_kd_coef", 0.45)
    problems = []
    if ce == 0 and kd == 0:
        problems.append("proofkd_ce_coef and proofkd_kd_coef are both 0: nothing would be optimised")
    problems += _teacher_problems(
        cfg, needed=bool(kd), alternative="or set proofkd_kd_coef: 0 for proof-weighted CE without a teacher"
    )
    start = get("proofkd_proof_start_marker", PROOF_MARKER)
    end = get("proofkd_proof_end_marker", FINAL_ANSWER_MARKER)
    if not start or not end or start == end:
        problems.append(
            "proofkd_proof_start_marker and proofkd_proof_end_marker must be two different non-empty strings "
            f"(got {start!r} and {end!r})"
        )
    if get("sample_packing"):
        problems.append(
            "sample_packing: true is not supported (the proof mask is not carried through packing); "
            "set sample_packing: false"
        )
    if get("rl"):
        problems.append(
            f"rl: {get('rl')} is set, but ProofKDPlugin trains Stage-1 distillation; for on-policy distillation "
            "list proofkd.plugin.OPDPlugin instead"
        )
    return problems


def _opd_problems(cfg: dict) -> list[str]:
    """Whole-config checks of on-policy distillation."""
    get = cfg.get
    trl = get("trl") or {}
    problems = _teacher_problems(
        cfg, needed=True, alternative="or the URL of a server serving it (proofkd_teacher_server)"
    )
    if str(get("rl") or "") != "grpo":
        problems.append("on-policy distillation runs on Axolotl's GRPO path: set rl: grpo")
    if get("proofkd_opd_coef", 1.0) == 0 and get("proofkd_opd_task_coef", 0.0) == 0:
        problems.append("proofkd_opd_coef and proofkd_opd_task_coef are both 0: nothing would be optimised")
    if trl.get("temperature", 1.0) != 1.0:
        problems.append(
            f"trl.temperature is {trl.get('temperature')}: OPD compares the student's and teacher's log-probabilities "
            "of the sampled tokens at temperature 1; set trl.temperature: 1.0"
        )
    if trl.get("use_liger_loss"):
        problems.append("trl.use_liger_loss assumes one advantage per sequence; OPD's are per token: set it false")
    if trl.get("beta"):
        problems.append("trl.beta adds a KL to a reference model, which OPD does not use: set trl.beta: 0")
    if not trl.get("reward_funcs"):
        problems.append(
            "trl.reward_funcs is empty, but the GRPO trainer needs one; use "
            "proofkd.plugin.opd.rewards.dapo_math_reward (it is only logged while proofkd_opd_task_coef is 0)"
        )
    return problems
