"""The plugins' config keys, validated by Axolotl together with the rest of the YAML.

Each `proofkd_*` key is defined here once: its type, default, bounds and a
one-line description. docs/configuration.md is generated from these models
(`python -m proofkd.plugin.config_docs`), and a test fails when it drifts.

Axolotl merges these models into its own config model, so the validators here
see the whole config: that is how options a plugin cannot honour (sample
packing, say) and misspelt `proofkd_*` keys are refused with the key and the
fix named, before any model is loaded. `TeacherArgs` holds the keys both
plugins share.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from proofkd.core import embedded
from proofkd.core.devices import missing_device_reason
from proofkd.core.io import unwritable_reason
from proofkd.core.templates import FINAL_ANSWER_MARKER, PROOF_MARKER
from proofkd.plugin.loss.divergences import DIVERGENCES, get_divergence

PREFIX = "proofkd_"


class TeacherArgs(BaseModel):
    """The keys Stage-1 distillation and OPD share: where the teacher comes from, and step profiling."""

    proofkd_profile: bool = Field(
        default=False,
        description="Log the seconds and peak memory of each part of a training step (teacher forward, student "
        "forward, loss head, micro-step, optimizer step) as proofkd/seconds/* and proofkd/peak_gib/* (opd/* in "
        "OPD). On a CPU the memory is counted tensor by tensor, which slows small models.",
    )

    proofkd_teacher: str | None = Field(
        default=None,
        description="Teacher model: Hub id, local path, or a `proofkd:` embedded model; needed unless "
        "proofkd_teacher_server is set (or, in Stage 1, proofkd_kd_coef is 0).",
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
    proofkd_teacher_server_timeout: float = Field(default=120.0, gt=0, description="Seconds to wait for one request.")
    proofkd_teacher_server_retries: int = Field(default=3, gt=0, description="Attempts per request before giving up.")
    proofkd_teacher_topk: int = Field(
        default=20,
        gt=0,
        description="Stage 1 with a teacher server or a teacher cache: the KL runs over the teacher's top-k tokens "
        "at each position (vLLM serves up to its --max-logprobs, 20 by default); see proofkd_teacher_topk_tail.",
    )
    proofkd_teacher_topk_tail: Literal["renormalize", "bucket"] = Field(
        default="bucket",
        description="Stage 1 with a top-k teacher (a server or a cache): what the KL does with the mass outside "
        "the teacher's top-k. "
        "'bucket' adds one outcome holding each side's remaining mass (much closer to the full KL; "
        "bench/topk_kl.py); 'renormalize' rescales the top-k to sum to 1.",
    )

    @field_validator("proofkd_teacher_device")
    @classmethod
    def _device(cls, value: str) -> str:
        head, _, index = value.partition(":")
        if head not in ("auto", "cpu", "cuda", "mps", "xpu") or (index and not index.isdigit()):
            raise ValueError(f"proofkd_teacher_device={value!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return value

    @field_validator(
        "proofkd_teacher_server_timeout", "proofkd_teacher_server_retries", "proofkd_teacher_topk", mode="wrap"
    )
    @classmethod
    def _teacher_bounds(cls, value: Any, handler, info) -> Any:
        return _within_bounds(value, handler, info)


class ProofKDArgs(TeacherArgs):
    """Keys of `proofkd.plugin.ProofKDPlugin` (all prefixed `proofkd_`)."""

    proofkd_temperature: float = Field(default=2.0, gt=0, description="Softmax temperature T of the distillation term.")
    proofkd_ce_coef: float = Field(default=0.55, ge=0, description="Weight of the proof-weighted CE in the loss.")
    proofkd_kd_coef: float = Field(default=0.45, ge=0, description="Weight of T^2 * divergence in the loss.")
    proofkd_divergence: str = Field(
        default="forward_kl",
        description=f"Divergence between teacher and student at temperature T in the distillation term, one of "
        f"{', '.join(DIVERGENCES)}: forward_kl = KL(teacher || student) (the published recipe), "
        "reverse_kl = KL(student || teacher), jsd = generalised Jensen-Shannon with weight proofkd_jsd_beta.",
    )
    proofkd_jsd_beta: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="beta of jsd, as in TRL's GKD: M = beta * teacher + (1 - beta) * student, "
        "JSD = beta * KL(teacher || M) + (1 - beta) * KL(student || M); 0 is forward KL, 1 reverse KL.",
    )
    proofkd_proof_weight_start: float = Field(
        default=2.5, ge=0, description="CE weight of derivation tokens at step 0."
    )
    proofkd_proof_weight_end: float = Field(
        default=1.5, ge=0, description="CE weight of derivation tokens at the last step."
    )
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
        default=None,
        ge=1,
        description="Tokens per loss chunk; unset keeps each [chunk, vocab] buffer near 128 MiB.",
    )
    proofkd_teacher_cache: str | None = Field(
        default=None,
        description="Folder of a teacher cache built by `proofkd teacher cache RECIPE`: the run reads the teacher's "
        "top-k (proofkd_teacher_topk) there and loads no teacher; refused if built for other inputs.",
    )
    proofkd_compile_loss_head: bool = Field(
        default=True,
        description="Run the loss head's per-chunk arithmetic through torch.compile where it compiles "
        "(falls back to eager with a warning).",
    )

    @field_validator("proofkd_divergence")
    @classmethod
    def _registered_divergence(cls, value: str) -> str:
        if value not in DIVERGENCES:
            raise ValueError(
                f"proofkd_divergence={value!r} is not a divergence; choose one of {', '.join(DIVERGENCES)}"
            )
        return value

    @field_validator(
        "proofkd_temperature",
        "proofkd_ce_coef",
        "proofkd_kd_coef",
        "proofkd_jsd_beta",
        "proofkd_proof_weight_start",
        "proofkd_proof_weight_end",
        "proofkd_chunk_size",
        mode="wrap",
    )
    @classmethod
    def _bounds(cls, value: Any, handler, info) -> Any:
        return _within_bounds(value, handler, info)

    @model_validator(mode="before")
    @classmethod
    def _whole_config(cls, data: Any) -> Any:
        if isinstance(data, dict):
            _raise_if(_unknown_keys(cls, data) + _stage1_problems(data) + output_dir_problems(data))
        return data


class OPDArgs(TeacherArgs):
    """Keys of `proofkd.plugin.OPDPlugin`: on-policy distillation on Axolotl's GRPO path."""

    proofkd_opd_estimator: Literal["k1", "k2", "k3"] = Field(
        default="k1",
        description="Per-token estimate of the reverse KL whose negative is the advantage: "
        "k1 = log p_s - log p_t; k2 = (log p_s - log p_t)^2 / 2; k3 = exp(log p_t - log p_s) - (log p_t - log p_s) - 1.",
    )
    proofkd_opd_clamp: float = Field(
        default=10.0, gt=0, description="Per-token estimates are clamped to [-clamp, clamp]."
    )
    proofkd_opd_advantage_from: Literal["current", "rollout"] = Field(
        default="current",
        description="Student log-probs of the estimate: the policy being updated (current), or the sampling "
        "policy's, fixed per rollout (rollout). They agree on each rollout's first optimizer step.",
    )
    proofkd_opd_coef: float = Field(default=1.0, ge=0, description="Weight of the distillation policy-gradient loss.")
    proofkd_opd_task_coef: float = Field(
        default=0.0,
        ge=0,
        description="Weight of a second clipped loss on the task reward's group-normalised advantage.",
    )
    proofkd_opd_dual_clip: float | None = Field(
        default=3.0,
        gt=1,
        description="Dual-clip bound c on the ratio for negative advantages (PPO dual clip); null: off.",
    )
    proofkd_opd_topk: int = Field(
        default=16, ge=0, description="k of the top-k overlap-mass diagnostic (0 turns it off)."
    )
    proofkd_opd_proof_weight: float = Field(
        default=1.0,
        gt=0,
        description="Span-aware OPD: the distillation advantage of each sample's derivation tokens (between "
        "Proof: and Final Answer:, found in the prompt and the sampled text) is multiplied by this; 1.0 is plain OPD.",
    )

    @field_validator(
        "proofkd_opd_clamp",
        "proofkd_opd_coef",
        "proofkd_opd_task_coef",
        "proofkd_opd_dual_clip",
        "proofkd_opd_topk",
        "proofkd_opd_proof_weight",
        mode="wrap",
    )
    @classmethod
    def _bounds(cls, value: Any, handler, info) -> Any:
        return _within_bounds(value, handler, info)

    @model_validator(mode="before")
    @classmethod
    def _whole_config(cls, data: Any) -> Any:
        if isinstance(data, dict):
            _raise_if(_unknown_keys(cls, data) + _opd_problems(data) + output_dir_problems(data))
        return data


PLUGIN_OF = {ProofKDArgs: "proofkd.plugin.ProofKDPlugin", OPDArgs: "proofkd.plugin.OPDPlugin"}

# Where a bound's error can name a fix, it does: "<key> must be <bound>, got <value><fix>".
_BOUND_FIXES = {
    "proofkd_temperature": "; the published recipe uses 2.0",
    "proofkd_chunk_size": "; or leave it unset",
    "proofkd_opd_clamp": "; the published recipe uses 10",
    "proofkd_opd_dual_clip": " (it bounds ratios above 1); or null to turn it off",
}
_BOUND_WORDS = {"proofkd_chunk_size": "a positive number of tokens"}
# pydantic's error type -> (its context key, the operator a message shows)
_OPS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def _within_bounds(value: Any, handler, info) -> Any:
    """Pydantic checks the Field's bound; this names the key, the bound and the fix when it fails."""
    try:
        return handler(value)
    except ValidationError as error:
        for detail in error.errors():
            if detail["type"] in _OPS:
                ctx, op = _OPS[detail["type"]]
                name = info.field_name
                limit = detail["ctx"][ctx]
                bound = _BOUND_WORDS.get(name, f"{op} {limit:g}" if isinstance(limit, float) else f"{op} {limit}")
                raise ValueError(f"{name} must be {bound}, got {value}{_BOUND_FIXES.get(name, '')}") from None
        raise


def known_keys(*models: type[BaseModel]) -> list[str]:
    """The `proofkd_*` keys the models define, in declaration order."""
    keys: dict[str, None] = {}
    for model in models:
        keys.update((name, None) for name in model.model_fields if name.startswith(PREFIX))
    return list(keys)


def _unknown_keys(cls: type[BaseModel], cfg: dict) -> list[str]:
    """`proofkd_*` keys the config's plugins do not define, each with the closest key that exists.

    A key is known when the model of a plugin the config lists under `plugins` declares it. Without a
    `plugins` list (a model validated on its own), the keys of `cls` are the known ones.
    """
    listed = [str(name).rsplit(".", 1)[-1] for name in cfg.get("plugins") or []]
    models = [model for model, plugin in PLUGIN_OF.items() if plugin.rsplit(".", 1)[-1] in listed]
    known = set(known_keys(*models) if models else known_keys(cls))
    everywhere = known_keys(ProofKDArgs, OPDArgs)
    problems = []
    for key in [k for k in cfg if isinstance(k, str) and k.startswith(PREFIX) and k not in known]:
        # Matched without the prefix, which every key shares and would otherwise dominate the score.
        close = difflib.get_close_matches(key[len(PREFIX) :], [k[len(PREFIX) :] for k in everywhere], n=1)
        close = [PREFIX + name for name in close]
        if not close:
            problems.append(f"{key} is not a proofkd key; see docs/configuration.md for the keys")
            continue
        owner = next(plugin for model, plugin in PLUGIN_OF.items() if close[0] in model.model_fields)
        if close[0] in known:
            problems.append(f"{key} is not a proofkd key: did you mean {close[0]}?")
        elif close[0] == key:
            problems.append(f"{key} is a key of {owner}, which this config does not list under plugins")
        else:
            problems.append(f"{key} is not a proofkd key; the closest, {close[0]}, is a key of {owner}")
    return problems


CONFIG_REFUSED = "proofkd cannot run this config"


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise ValueError(f"{CONFIG_REFUSED}:\n- " + "\n- ".join(problems))


def config_error_lines(error: BaseException) -> list[str] | None:
    """A refused config's problems, one line each, or None when `error` is not a refusal of proofkd's keys.

    Axolotl validates the config inside its launcher, so a refusal otherwise reaches the user as a pydantic
    traceback of some forty lines with the messages in the middle.
    """
    if not isinstance(error, ValidationError):
        return None
    lines, ours = [], False
    for detail in error.errors():
        message = str(detail.get("msg", "")).removeprefix("Value error, ")
        location = ".".join(str(part) for part in detail.get("loc", ()))
        ours = ours or message.startswith(CONFIG_REFUSED) or location.startswith(PREFIX)
        if message.startswith(CONFIG_REFUSED):
            lines += [line.removeprefix("- ") for line in message.splitlines()[1:]]
        else:
            lines.append(f"{location}: {message}" if location and not message.startswith(location) else message)
    return lines if ours else None


def _getter(model: type[BaseModel], cfg: dict):
    """cfg.get with the model's own defaults, so the checks below never restate one."""

    def get(key: str) -> Any:
        if key in cfg:
            return cfg[key]
        field = model.model_fields.get(key)
        return None if field is None else field.get_default(call_default_factory=True)

    return get


def _teacher_problems(cfg: dict, needed: bool, alternative: str) -> list[str]:
    get = _getter(TeacherArgs, cfg)
    problems = []
    if needed and not (get("proofkd_teacher") or get("proofkd_teacher_server")):
        problems.append(f"proofkd_teacher is not set: name the teacher model (Hub id or path), {alternative}")
    if get("proofkd_teacher_load_in_8bit") and get("proofkd_teacher_device") == "cpu":
        problems.append("proofkd_teacher_load_in_8bit needs a CUDA device; set proofkd_teacher_device to cuda or auto")
    if get("proofkd_teacher") and not get("proofkd_teacher_server") and not cfg.get("proofkd_teacher_cache"):
        problems += teacher_path_problems(str(get("proofkd_teacher")))
        problems += _teacher_device_problems(str(get("proofkd_teacher_device")))
    return problems


def teacher_path_problems(name: str) -> list[str]:
    """A `proofkd_teacher` that can only be meant as a local path must be a model folder.

    A name of the form `org/model` that is not a local folder is taken for a Hub id and left to the loader,
    which can only tell when it reaches the Hub.
    """
    if embedded.is_reference(name):
        return []  # resolved to a cached folder when the plugin registers, before validation
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return [
                f"proofkd_teacher: the folder {name} has no config.json, so it is not a saved model; "
                "name the folder that save_pretrained wrote, or a Hub id"
            ]
        return []
    if path.exists():
        return [f"proofkd_teacher: {name} is a file; name the model's folder (the one holding config.json)"]
    try:
        validate_repo_id(name)
    except HFValidationError:
        return [
            f"proofkd_teacher: no folder {name} exists here, and it is not a Hub id (org/model) either; "
            "fix the path, or name the teacher's Hub id"
        ]
    return []


def output_dir_problems(cfg: dict) -> list[str]:
    """An output_dir the run could not save its checkpoints in, refused before any model loads rather than at
    the first save."""
    output_dir = cfg.get("output_dir")
    reason = unwritable_reason(output_dir, "output_dir") if output_dir else None
    return [f"output_dir {output_dir}: {reason}"] if reason else []


def _teacher_device_problems(device: str) -> list[str]:
    """A CUDA teacher device this machine does not have."""
    reason = missing_device_reason(device)
    if reason is None:
        return []
    return [f"proofkd_teacher_device: {reason}; use auto (each rank's training device), cpu, or a device it has"]


def _stage1_problems(cfg: dict) -> list[str]:
    """Whole-config checks of Stage-1 distillation: each message names the key and what to do."""
    get = _getter(ProofKDArgs, cfg)
    ce = get("proofkd_ce_coef")
    kd = get("proofkd_kd_coef")
    problems = []
    if ce == 0 and kd == 0:
        problems.append("proofkd_ce_coef and proofkd_kd_coef are both 0: nothing would be optimised")
    problems += _teacher_problems(
        cfg, needed=bool(kd), alternative="or set proofkd_kd_coef: 0 for proof-weighted CE without a teacher"
    )
    start = get("proofkd_proof_start_marker")
    end = get("proofkd_proof_end_marker")
    if not start or not end or start == end:
        problems.append(
            "proofkd_proof_start_marker and proofkd_proof_end_marker must be two different non-empty strings "
            f"(got {start!r} and {end!r})"
        )
    name, beta = get("proofkd_divergence"), get("proofkd_jsd_beta")
    topk_teacher = "proofkd_teacher_cache" if get("proofkd_teacher_cache") else "proofkd_teacher_server"
    if get(topk_teacher) and kd and name in DIVERGENCES and 0 <= beta <= 1:
        divergence = get_divergence(name, beta=beta)
        if not divergence.finite_on_topk:
            named = f"proofkd_divergence: {name}"
            if divergence.name != name:
                named += f" with proofkd_jsd_beta: {beta:g} ({divergence.name})"
            problems.append(
                f"{named} cannot run on {topk_teacher}: a top-k teacher gives zero "
                "probability outside its top-k, so KL(student || teacher) is infinite there; use "
                "proofkd_divergence: forward_kl or jsd (with proofkd_jsd_beta below 1)"
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
    get = _getter(OPDArgs, cfg)
    trl = get("trl") or {}
    problems = _teacher_problems(
        cfg, needed=True, alternative="or the URL of a server serving it (proofkd_teacher_server)"
    )
    if str(get("rl") or "") != "grpo":
        problems.append("on-policy distillation runs on Axolotl's GRPO path: set rl: grpo")
    if get("proofkd_opd_coef") == 0 and get("proofkd_opd_task_coef") == 0:
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
