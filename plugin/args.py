"""The plugin's config keys, validated by Axolotl together with the rest of the YAML.

Axolotl merges this model into its own config model, so the validators here
see the whole config: that is how options the plugin cannot honour (sample
packing, say) are refused with the key and the fix named, before any model
is loaded.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from proofkd.templates import FINAL_ANSWER_MARKER, PROOF_MARKER


class ProofKDArgs(BaseModel):
    """Keys of `proofkd.plugin.ProofKDPlugin` (all prefixed `proofkd_`)."""

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

    @field_validator("proofkd_teacher_device")
    @classmethod
    def _device(cls, value: str) -> str:
        head, _, index = value.partition(":")
        if head not in ("auto", "cpu", "cuda", "mps", "xpu") or (index and not index.isdigit()):
            raise ValueError(f"proofkd_teacher_device={value!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return value

    @model_validator(mode="before")
    @classmethod
    def _whole_config(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        problems = _config_problems(data)
        if problems:
            raise ValueError("proofkd cannot run this config:\n- " + "\n- ".join(problems))
        return data


def _config_problems(cfg: dict) -> list[str]:
    """Whole-config checks: each message names the key and what to do."""
    problems = []
    get = cfg.get
    ce = get("proofkd_ce_coef", 0.55)
    kd = get("proofkd_kd_coef", 0.45)
    if ce == 0 and kd == 0:
        problems.append("proofkd_ce_coef and proofkd_kd_coef are both 0: nothing would be optimised")
    if kd and not get("proofkd_teacher"):
        problems.append(
            "proofkd_teacher is not set: name the teacher model (Hub id or path), "
            "or set proofkd_kd_coef: 0 for proof-weighted CE without a teacher"
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
            f"rl: {get('rl')} is set, but ProofKDPlugin trains Stage-1 distillation; remove rl for this recipe"
        )
    if get("proofkd_teacher_load_in_8bit") and get("proofkd_teacher_device", "auto") == "cpu":
        problems.append("proofkd_teacher_load_in_8bit needs a CUDA device; set proofkd_teacher_device to cuda or auto")
    return problems
