"""The Stage-1 trainer: the online teacher and the proof-weighted KD loss inside Axolotl's trainer.

Per micro-batch: the teacher gives its targets (no grad; `Teacher.targets`:
its final hidden states and output weight in process, its top-k from a
server); the student runs with its output head swapped for the loss head
(`proofkd.plugin.heads`), so the loss is computed inside the student's forward
from its final hidden states and output weight, with no logits materialised.

Normalisation over an optimizer step: before a step's micro-batches run,
`get_batch_samples` counts the step's valid tokens and derivation tokens over
every micro-batch of the accumulation window and, under a multi-process
launch, over every rank. Each micro-batch's loss is its share of the step's
loss, so the sum over the window is the formula in `proofkd.plugin.loss`
evaluated on the whole step, however it is split. How the totals reach the
loss, and the rank factor, are described at `ProofKDTrainer._step_denominators`.
"""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from axolotl.core.trainers.base import AxolotlTrainer
from transformers import TrainerCallback

from proofkd.core.io import atomic_path
from proofkd.core.logs import get_logger
from proofkd.core.run_log import LOG_FILE
from proofkd.plugin.heads import head_replaced
from proofkd.plugin.loss import LossStats, proof_kd_loss
from proofkd.plugin.loss.divergences import Divergence, get_divergence
from proofkd.plugin.loss.stats import token_spans
from proofkd.plugin.profile import PartClock
from proofkd.plugin.schedule import proof_weight_at
from proofkd.plugin.teacher import Teacher, TeacherTargets, check_finite

LOG = get_logger(__name__)


@dataclass(frozen=True)
class ProofKDConfig:
    """Loss settings of a run: the validated `proofkd_*` keys (without the teacher's), read by `from_cfg`.

    No defaults here: each lives once, in `proofkd.plugin.args.ProofKDArgs`.
    """

    temperature: float
    ce_coef: float
    kd_coef: float
    proof_weight_start: float
    proof_weight_end: float
    proof_weight_schedule: str
    ce_normalization: str
    chunk_size: int | None
    compile_head: bool
    divergence: str
    jsd_beta: float
    topk_tail: str
    profile: bool

    @classmethod
    def from_cfg(cls, cfg) -> ProofKDConfig:
        return cls(
            temperature=cfg.proofkd_temperature,
            ce_coef=cfg.proofkd_ce_coef,
            kd_coef=cfg.proofkd_kd_coef,
            proof_weight_start=cfg.proofkd_proof_weight_start,
            proof_weight_end=cfg.proofkd_proof_weight_end,
            proof_weight_schedule=cfg.proofkd_proof_weight_schedule,
            ce_normalization=cfg.proofkd_ce_normalization,
            chunk_size=cfg.proofkd_chunk_size,
            compile_head=bool(cfg.proofkd_compile_loss_head),
            divergence=cfg.proofkd_divergence,
            jsd_beta=cfg.proofkd_jsd_beta,
            topk_tail=cfg.proofkd_teacher_topk_tail,
            profile=bool(cfg.proofkd_profile),
        )


@dataclass(frozen=True)
class StepTotals:
    """Token counts of one optimizer step, summed over its micro-batches (and ranks).

    `get_batch_samples` builds one per optimizer step and returns it where
    HF's Trainer expects the step's item count; the Trainer hands it,
    unchanged, to every `compute_loss` of that step as `num_items_in_batch`.
    """

    tokens: torch.Tensor
    proof_tokens: torch.Tensor
    across_processes: int

    def denominators(self, proof_weight: float, normalization: str) -> tuple[torch.Tensor, torch.Tensor]:
        d_kd = self.tokens
        d_ce = self.tokens if normalization == "tokens" else self.tokens + (proof_weight - 1.0) * self.proof_tokens
        return d_ce, d_kd


def shifted_counts(batch: dict) -> torch.Tensor:
    """(valid tokens, derivation tokens) predicted in a batch: labels and mask shifted by one."""
    labels = batch["labels"][..., 1:]
    valid = labels != -100
    proof = valid & (batch["proof_mask"][..., 1:] != 0)
    return torch.stack([valid.sum(), proof.sum()])


@dataclass(frozen=True)
class Denominators:
    """What a micro-batch's loss is divided by, and the factor its loss is multiplied by afterwards."""

    ce: torch.Tensor | None  # None: the loss head's own (this batch's weights)
    kd: torch.Tensor | None  # None: this batch's valid tokens
    ranks: int


class ProofKDTrainer(AxolotlTrainer):
    """Axolotl's trainer with the proof-weighted KD loss and an online teacher.

    The plugin calls `attach(config, teacher, kl_vocab)` after construction.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The loss is normalised per optimizer step here, not by the trainer.
        self.model_accepts_loss_kwargs = True
        self.proofkd: ProofKDConfig | None = None
        self.teacher: Teacher | None = None
        self.kl_vocab: int | None = None
        self.divergence: Divergence | None = None
        self._proofkd_stats = {"train": LossStats.zeros(), "eval": LossStats.zeros()}
        self._weight_used: float | None = None  # the proof weight of the last training micro-batch
        self.clock = PartClock()  # switched on by attach under proofkd_profile

    def attach(self, config: ProofKDConfig, teacher: Teacher | None, kl_vocab: int | None) -> None:
        """The run's settings, its teacher (None when the KL is off) and the KL's vocabulary rows; the divergence
        is built here, once (a served teacher with a divergence infinite on its top-k is refused by `args`)."""
        self.proofkd, self.teacher, self.kl_vocab = config, teacher, kl_vocab
        self.divergence = get_divergence(config.divergence, beta=config.jsd_beta)
        self.clock.enabled, self.clock.device = config.profile, self.args.device

    def _part(self, name: str):
        """A span of the step's `name` part while training (evaluation is not a part of the step)."""
        return self.clock.part(name) if self.model.training else nullcontext()

    def training_step(self, model, inputs, num_items_in_batch=None):
        # Not `_part`: the Trainer switches the model to training mode inside this call, so the first
        # micro-step of a run, and the first after an evaluation, would find it still in eval mode.
        with self.clock.part("micro_step"):
            return super().training_step(model, inputs, num_items_in_batch)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and "proof_mask" not in self._signature_columns:
            self._signature_columns.append("proof_mask")

    def proof_weight(self) -> float:
        c = self.proofkd
        return proof_weight_at(
            self.state.global_step,
            self.state.max_steps,
            c.proof_weight_start,
            c.proof_weight_end,
            c.proof_weight_schedule,
        )

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The step's micro-batches, and their `StepTotals` as HF's item count (see `_step_denominators`)."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        counts = sum((shifted_counts(b).to(device) for b in batches), torch.zeros(2, dtype=torch.long, device=device))
        processes = self.accelerator.num_processes
        if processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        totals = StepTotals(tokens=counts[0].float(), proof_tokens=counts[1].float(), across_processes=processes)
        return batches, totals

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.proofkd is None:
            raise RuntimeError("ProofKDTrainer is not attached: the plugin calls attach() in post_trainer_create")
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        proof_mask = inputs.pop("proof_mask")
        inputs.pop("num_items_in_batch", None)
        weight = self.proof_weight()
        denominators = self._step_denominators(num_items_in_batch, labels, proof_mask, weight)
        # row i of everything the loss head sees belongs to the token predicted from position i
        flat_labels, flat_proof = labels[:, 1:].reshape(-1), proof_mask[:, 1:].reshape(-1)
        flat_spans = token_spans(labels, proof_mask)[:, 1:].reshape(-1)
        with self._part("teacher_forward"):
            targets = self._teacher_targets(inputs)
        if targets is not None:
            where = f"step {self.state.global_step + 1}" if model.training else "evaluation"
            check_finite(targets, flat_labels != -100, labels.shape[1] - 1, where)
        stats_out: list[LossStats] = []
        head = self._loss_head(targets, flat_labels, flat_proof, flat_spans, weight, denominators, stats_out)
        inputs["use_cache"] = False
        with head_replaced(model, head), self._part("student_forward"):
            outputs = model(**inputs)
        # Undo accelerate's mean over ranks (see `_step_denominators`): the gradient is the step's global sum.
        loss = outputs.logits * denominators.ranks
        self._record_stats(model.training, stats_out[0], weight)
        return (loss, {}) if return_outputs else loss

    def _step_denominators(self, num_items_in_batch, labels, proof_mask, weight: float) -> Denominators:
        """The CE and KL denominators of this micro-batch's loss, and the rank factor.

        Training: HF's Trainer calls `get_batch_samples` once per optimizer
        step and passes what it returns as the step's item count, here a
        `StepTotals`, as `num_items_in_batch` to each of the step's
        `compute_loss` calls. The denominators are then the whole step's
        (every micro-batch of the accumulation window, every rank), so the
        micro-batch losses add up to the step's loss however it is split.
        Because `model_accepts_loss_kwargs` is set, the Trainer does not also
        divide by the accumulation steps.

        `ranks` (`across_processes`): DDP, FSDP and DeepSpeed average the
        gradients over the ranks. A loss already divided by the global token
        count must therefore be multiplied by the number of ranks, so that the
        average of the ranks' gradients is the gradient of the global sum
        over the step (HF's own `average_tokens_across_devices` does the same).

        Evaluation or a direct call (anything but a `StepTotals`): this batch
        alone, on this rank, with factor 1.
        """
        if isinstance(num_items_in_batch, StepTotals):
            d_ce, d_kd = num_items_in_batch.denominators(weight, self.proofkd.ce_normalization)
            return Denominators(ce=d_ce, kd=d_kd, ranks=num_items_in_batch.across_processes)
        d_ce = None
        if self.proofkd.ce_normalization == "tokens":
            d_ce = shifted_counts({"labels": labels, "proof_mask": proof_mask})[0]
        return Denominators(ce=d_ce, kd=None, ranks=1)

    def _teacher_targets(self, inputs) -> TeacherTargets | None:
        """The teacher's side of the loss for this batch, or None when the KL is off (`proofkd_kd_coef: 0`)."""
        if self.proofkd.kd_coef == 0:
            return None
        if self.teacher is None:
            raise RuntimeError("ProofKDTrainer has no teacher: the plugin attaches one in post_trainer_create")
        return self.teacher.targets(inputs["input_ids"], inputs.get("attention_mask"))

    def _loss_head(self, targets, flat_labels, flat_proof, flat_spans, weight, denominators, stats_out):
        """The function that replaces the student's output head: the loss from its final hidden states and weight."""
        config = self.proofkd
        teacher_hidden = teacher_weight = teacher_topk = None
        if targets is not None:
            teacher_hidden, teacher_weight, teacher_topk = targets.hidden, targets.weight, targets.topk

        def loss_head(head, hidden):
            with self._part("loss_head"):
                loss, stats = proof_kd_loss(
                    hidden[:, :-1].reshape(-1, hidden.shape[-1]),
                    head.weight,
                    teacher_hidden,
                    teacher_weight,
                    flat_labels,
                    flat_proof,
                    weight,
                    temperature=config.temperature,
                    ce_coef=config.ce_coef,
                    kd_coef=config.kd_coef,
                    ce_denominator=denominators.ce,
                    kd_denominator=denominators.kd,
                    chunk_size=config.chunk_size,
                    kl_vocab=self.kl_vocab,
                    compile=config.compile_head,
                    teacher_topk=teacher_topk,
                    topk_tail=config.topk_tail,
                    divergence=self.divergence,
                    spans=flat_spans,
                )
            stats_out.append(stats)
            return loss

        return loss_head

    def _record_stats(self, training: bool, stats: LossStats, weight: float) -> None:
        """Add the micro-batch's loss statistics to what `log` reports next."""
        bucket = "train" if training else "eval"
        self._proofkd_stats[bucket] = self._proofkd_stats[bucket] + stats
        if training:
            self._weight_used = weight

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation computes the loss only: the loss head never forms logits to return."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        bucket, prefix = ("eval", "eval_proofkd/") if "eval_loss" in logs else ("train", "proofkd/")
        stats = self._proofkd_stats[bucket]
        if self.accelerator.num_processes > 1:
            stats = LossStats(self.accelerator.reduce(stats.sums.to(self.accelerator.device), reduction="sum"))
        if stats["proof_tokens"] + stats["other_tokens"] > 0:
            for key, value in stats.means(self.proofkd.temperature).items():
                if not math.isnan(value):  # a mean over no tokens (no derivation in these rows): nothing to log
                    logs[prefix + key] = value
            if bucket == "train" and self._weight_used is not None:
                logs[prefix + "proof_weight"] = self._weight_used
        if bucket == "train" and self.teacher is not None:
            logs.update({prefix + name: value for name, value in self.teacher.counters().items()})
        if bucket == "train":
            logs.update(self.clock.drain(prefix))
        self._proofkd_stats[bucket] = LossStats.zeros()
        super().log(logs, start_time)


class JsonlLogCallback(TrainerCallback):
    """Appends every log record (with its step) to `<output_dir>/proofkd_log.jsonl` on the main process.

    A run that starts at step N (resumed from checkpoint-N, or N = 0 for a new run) first drops the records
    after step N: the steps an interrupted run logged past its last checkpoint are trained and logged again,
    so each step stays in the file once.
    """

    def on_train_begin(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / LOG_FILE
        if not state.is_world_process_zero or not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= state.global_step]
        if len(kept) == len(lines):
            return
        with atomic_path(path) as partial:
            partial.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        LOG.info(
            "%s: dropped %d record(s) after step %d, which this run logs again",
            path,
            len(lines) - len(kept),
            state.global_step,
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step}
        for key, value in logs.items():
            if (
                isinstance(value, (int, float))
                and not (isinstance(value, float) and math.isnan(value))
                or isinstance(value, str)
            ):
                record[key] = value
        path = Path(args.output_dir) / LOG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
