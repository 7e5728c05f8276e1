"""The OPD trainer: TRL's GRPO machinery (sampling, batching, vLLM when configured) with OPD's loss.

Per rollout, after the student has sampled and GRPO has scored the task
reward, the teacher scores every sampled token (`teacher_per_token_logps`),
and the rollout's diagnostics are logged: mean k1, k2 and k3, and the
student's and teacher's probability mass on the tokens both rank in their
top-k, and k1 on the samples' derivations and on the rest
(`opd/derivation/k1`, `opd/answer/k1`). With `proofkd_opd_proof_weight`, the
derivation tokens' advantage is scaled by it (span-aware OPD). Each micro-batch's loss is then `proofkd.plugin.opd.losses.opd_loss`
on the current student log-probs, divided by the completion tokens of its
whole optimizer step (all micro-batches, all ranks): a token mean over the
step, as verl's, rather than over the whole rollout, as TRL's default.

Axolotl's RL builder gives a plugin's trainer class no model and no reward
functions; they are recovered from the plugin and from Axolotl's GRPO
strategy, so the class also works when named with `trainer_cls:`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from axolotl.core.trainers.grpo.trainer import AxolotlGRPOTrainer

from proofkd.core.logs import get_logger
from proofkd.plugin.heads import final_hidden_states, output_head
from proofkd.plugin.logprobs import TokenScores, overlap_mass, token_log_probs
from proofkd.plugin.opd.losses import kl_estimate, opd_loss
from proofkd.plugin.opd.spans import derivation_mask
from proofkd.plugin.profile import PartClock
from proofkd.plugin.teacher import Teacher

LOG = get_logger(__name__)


@dataclass(frozen=True)
class OPDConfig:
    """OPD's loss settings: the validated `proofkd_opd_*` keys, read by `from_cfg`.

    No defaults here: each lives once, in `proofkd.plugin.args.OPDArgs`.
    """

    estimator: str
    clamp: float
    coef: float
    task_coef: float
    dual_clip: float | None
    topk: int
    advantage_from: str
    proof_weight: float
    profile: bool

    @classmethod
    def from_cfg(cls, cfg) -> OPDConfig:
        return cls(
            estimator=cfg.proofkd_opd_estimator,
            clamp=cfg.proofkd_opd_clamp,
            coef=cfg.proofkd_opd_coef,
            task_coef=cfg.proofkd_opd_task_coef,
            dual_clip=cfg.proofkd_opd_dual_clip,
            topk=cfg.proofkd_opd_topk,
            advantage_from=cfg.proofkd_opd_advantage_from,
            proof_weight=float(cfg.proofkd_opd_proof_weight),
            profile=bool(cfg.proofkd_profile),
        )


def _from_axolotl(model, reward_funcs, kwargs):
    """The model, reward functions and trainer kwargs that Axolotl's RL builder withholds from plugin trainers."""
    from axolotl.core.trainers.grpo import GRPOStrategy
    from axolotl.integrations.base import PluginManager

    manager = PluginManager.get_instance()
    cfg = manager.cfg
    if model is None:
        model = next((getattr(p, "model", None) for p in manager.plugins.values() if getattr(p, "model", None)), None)
        if model is None:
            raise RuntimeError("OPDTrainer got no model: list proofkd.plugin.OPDPlugin under plugins")
    if reward_funcs is None and cfg is not None:
        reward_funcs = (GRPOStrategy.set_trainer_args(cfg) or [None])[0]
    if cfg is not None:
        kwargs = {**GRPOStrategy.set_trainer_kwargs(cfg), **kwargs}
    return model, reward_funcs, kwargs


class OPDTrainer(AxolotlGRPOTrainer):
    """GRPO with the teacher's per-token judgement as the advantage (see the module docstring)."""

    def __init__(self, model=None, reward_funcs=None, *args, **kwargs):
        model, reward_funcs, kwargs = _from_axolotl(model, reward_funcs, kwargs)
        super().__init__(model, reward_funcs, *args, **kwargs)
        self.opd: OPDConfig | None = None  # both set by `attach`
        self.teacher: Teacher | None = None
        self.clock = PartClock()  # switched on by attach under proofkd_profile
        spg, ga = self.args.steps_per_generation, self.args.gradient_accumulation_steps
        self._step_normaliser = spg % ga == 0
        if not self._step_normaliser:
            LOG.warning(
                "steps_per_generation (%d) is not a multiple of gradient_accumulation_steps (%d): the loss is "
                "normalised over the rollout's tokens instead of the optimizer step's",
                spg,
                ga,
            )

    def attach(self, config: OPDConfig, teacher: Teacher) -> None:
        self.opd, self.teacher = config, teacher
        self.clock.enabled, self.clock.device = config.profile, self.args.device

    def _part(self, name: str):
        """A span of the step's `name` part while training (evaluation is not a part of the step)."""
        return self.clock.part(name) if self.model.training else nullcontext()

    def training_step(self, model, inputs, num_items_in_batch=None):
        # Not `_part`: the Trainer switches the model to training mode inside this call, so the first
        # micro-step of a run, and the first after an evaluation, would find it still in eval mode.
        with self.clock.part("micro_step"):
            return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            logs.update(self.clock.drain("opd/"))
        super().log(logs, start_time)

    # --- rollout: teacher scores and diagnostics ----------------------------------------------

    def _generate_and_score_completions(self, inputs):
        with self._part("rollout"):
            out = super()._generate_and_score_completions(inputs)
        if self.teacher is None:
            raise RuntimeError("OPDTrainer has no teacher: the plugin attaches one in post_trainer_create")
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        length = out["completion_ids"].shape[1]
        with self._part("teacher_score"):
            teacher = self.teacher.score(ids, mask, length, topk=self.opd.topk)
        out["teacher_per_token_logps"] = teacher.logps.to(out["completion_ids"].device)
        out["task_advantages"] = out["advantages"]
        out["derivation_mask"] = derivation_mask(
            self.processing_class, out["prompt_ids"], out["prompt_mask"], out["completion_ids"], out["completion_mask"]
        )
        self._log_rollout(
            self._student_scores(ids, mask, length), teacher, out["completion_mask"], out["derivation_mask"]
        )
        mode = "train" if self.model.training else "eval"
        for name, total in self.teacher.counters().items():
            self._metrics[mode][f"opd/{name}"].append(total)
        return out

    @torch.no_grad()
    def _student_scores(self, ids, mask, length) -> TokenScores:
        model = self.accelerator.unwrap_model(self.model)
        hidden = final_hidden_states(model, input_ids=ids, attention_mask=mask, use_cache=False)
        positions = hidden[:, -length - 1 : -1]
        targets = ids[:, -length:]
        scores = token_log_probs(
            positions.reshape(-1, positions.shape[-1]),
            output_head(model).weight,
            targets.reshape(-1),
            topk=self.opd.topk,
        )
        return scores.reshape(*targets.shape)

    def _log_rollout(self, student: TokenScores, teacher: TokenScores, completion_mask, derivation) -> None:
        mode = "train" if self.model.training else "eval"
        on = completion_mask.bool()
        teacher_logps = teacher.logps.to(student.logps.device)
        estimates = {k: kl_estimate(student.logps, teacher_logps, k, self.opd.clamp) for k in ("k1", "k2", "k3")}
        sums = [estimate[on].sum() for estimate in estimates.values()]
        sums += [student.logps[on].sum(), teacher_logps[on].sum()]
        self._log_spans(mode, estimates["k1"], on, derivation)
        if self.opd.topk and teacher.topk_ids is not None:
            s_mass, t_mass = overlap_mass(
                student, TokenScores(teacher_logps, teacher.topk_ids.to(on.device), teacher.topk_logps.to(on.device))
            )
            sums += [s_mass[on].sum(), t_mass[on].sum()]
        totals = self.accelerator.reduce(torch.stack([*sums, on.sum().float()]).float(), reduction="sum")
        tokens = totals[-1].clamp(min=1.0)
        names = ["k1", "k2", "k3", "student_logp", "teacher_logp", "overlap_mass_student", "overlap_mass_teacher"]
        for name, value in zip(names, totals[:-1], strict=False):
            self._metrics[mode][f"opd/{name}"].append((value / tokens).item())

    def _log_spans(self, mode: str, k1: torch.Tensor, on: torch.Tensor, derivation: torch.Tensor) -> None:
        """Mean k1 and token count of the samples' derivation and of the rest (the answer); a span with no
        tokens in the rollout logs nothing."""
        derivation = derivation.to(on.device) & on
        answer = on & ~derivation
        sums = torch.stack([k1[derivation].sum(), derivation.sum(), k1[answer].sum(), answer.sum()]).float()
        sums = self.accelerator.reduce(sums, reduction="sum")
        for span, (total, tokens) in {"derivation": sums[:2], "answer": sums[2:]}.items():
            if tokens > 0:
                self._metrics[mode][f"opd/{span}/k1"].append((total / tokens).item())
                self._metrics[mode][f"opd/{span}/tokens"].append(tokens.item())

    # --- loss: a token mean over each optimizer step --------------------------------------------

    def _prepare_inputs(self, generation_batch):
        regenerates = self.model.training and (
            self._step % (self.args.steps_per_generation * self.num_iterations) == 0 or self._buffered_inputs is None
        )
        inputs = super()._prepare_inputs(generation_batch)
        if regenerates and self._step_normaliser:
            ga = self.args.gradient_accumulation_steps
            for start in range(0, len(self._buffered_inputs), ga):
                group = self._buffered_inputs[start : start + ga]
                local = sum(b["completion_mask"].sum() for b in group).float().reshape(1)
                total = self.accelerator.gather(local).sum()
                for batch in group:
                    batch["opd_step_tokens"] = total
        return inputs

    def _compute_loss(self, model, inputs):
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        logps, _, _ = self._get_per_token_logps_and_entropies(model, ids, mask, completion_ids.shape[1])
        old = inputs.get("old_per_token_logps")
        old = logps.detach() if old is None else old
        if model.training:
            # `tokens` counts the step's completion tokens on every rank. The ranks' gradients are averaged
            # (DDP / FSDP / DeepSpeed), so dividing by tokens / ranks makes that average the gradient of the
            # step's global token sum divided by its global token count.
            tokens = inputs.get("opd_step_tokens", inputs["num_items_in_batch"])
            normaliser = tokens.clamp(min=1.0) / self.accelerator.num_processes
        else:
            normaliser = completion_mask.sum().clamp(min=1.0)
        loss, stats = opd_loss(
            logps,
            old,
            inputs["teacher_per_token_logps"],
            completion_mask,
            estimator=self.opd.estimator,
            clamp=self.opd.clamp,
            coef=self.opd.coef,
            task_advantages=inputs["task_advantages"],
            task_coef=self.opd.task_coef,
            eps_low=self.epsilon_low,
            eps_high=self.epsilon_high,
            dual_clip=self.opd.dual_clip,
            normalizer=normaliser,
            advantage_from=self.opd.advantage_from,
            advantage_scale=self._advantage_scale(inputs),
        )
        mode = "train" if model.training else "eval"
        counts = self.accelerator.reduce(torch.stack([v.float() for v in stats.values()]), reduction="sum")
        tokens = counts[-1].clamp(min=1.0)
        for name, value in zip(("clip_ratio/low", "clip_ratio/high", "clip_ratio/dual"), counts[:-1], strict=False):
            self._metrics[mode][f"opd/{name}"].append((value / tokens).item())
        return loss

    def _advantage_scale(self, inputs) -> torch.Tensor | None:
        """The proof weight on each sample's derivation tokens, 1 elsewhere; None for plain OPD."""
        if self.opd.proof_weight == 1.0:
            return None
        derivation = inputs["derivation_mask"]
        return torch.where(derivation, self.opd.proof_weight, 1.0).to(inputs["teacher_per_token_logps"].dtype)
