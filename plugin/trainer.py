"""The Stage-1 trainer: the online teacher and the proof-weighted KD loss inside Axolotl's trainer.

Per micro-batch: the teacher runs (no grad) to its final hidden states; the
student runs with its output head swapped for the loss head
(`proofkd.plugin.heads`), so the loss is computed inside the student's forward
from its final hidden states and output weight, with no logits materialised.

Normalisation over an optimizer step: before a step's micro-batches run,
`get_batch_samples` counts the step's valid tokens and derivation tokens over
every micro-batch of the accumulation window and, under a multi-process
launch, over every rank. Each micro-batch's loss is its share of the step's
loss, so the sum over the window is the formula in `proofkd.plugin.loss`
evaluated on the whole step, however it is split.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from axolotl.core.trainers.base import AxolotlTrainer
from transformers import TrainerCallback

from proofkd.core.logs import get_logger
from proofkd.plugin.heads import head_replaced
from proofkd.plugin.loss import LossStats, proof_kd_loss
from proofkd.plugin.schedule import proof_weight_at

LOG = get_logger(__name__)

LOG_FILE = "proofkd_log.jsonl"


@dataclass(frozen=True)
class ProofKDConfig:
    """Loss settings of a run (the `proofkd_*` keys, without the teacher's)."""

    temperature: float = 2.0
    ce_coef: float = 0.55
    kd_coef: float = 0.45
    proof_weight_start: float = 2.5
    proof_weight_end: float = 1.5
    proof_weight_schedule: str = "linear"
    ce_normalization: str = "weights"
    chunk_size: int | None = None
    compile_head: bool = False
    server_topk: int = 20

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
            server_topk=cfg.proofkd_teacher_server_topk,
        )


@dataclass(frozen=True)
class StepTotals:
    """Token counts of one optimizer step, summed over its micro-batches (and ranks)."""

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


class ProofKDTrainer(AxolotlTrainer):
    """Axolotl's trainer with the proof-weighted KD loss and an online teacher.

    The plugin calls `attach(config, teacher, kl_vocab)` after construction.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The loss is normalised per optimizer step here, not by the trainer.
        self.model_accepts_loss_kwargs = True
        self.proofkd: ProofKDConfig = ProofKDConfig()
        self.teacher = None
        self.kl_vocab: int | None = None
        self._proofkd_stats = {"train": LossStats.zeros(), "eval": LossStats.zeros()}
        self._weight_used: float | None = None  # the proof weight of the last training micro-batch

    def attach(self, config: ProofKDConfig, teacher, kl_vocab: int | None) -> None:
        self.proofkd, self.teacher, self.kl_vocab = config, teacher, kl_vocab

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
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        proof_mask = inputs.pop("proof_mask")
        inputs.pop("num_items_in_batch", None)
        weight = self.proof_weight()
        config = self.proofkd

        if isinstance(num_items_in_batch, StepTotals):
            d_ce, d_kd = num_items_in_batch.denominators(weight, config.ce_normalization)
            scale = num_items_in_batch.across_processes
        else:  # evaluation, or a direct call: normalise over this batch
            d_ce = d_kd = None
            if config.ce_normalization == "tokens":
                d_ce = shifted_counts({"labels": labels, "proof_mask": proof_mask})[0]
            scale = 1

        teacher_hidden = teacher_weight = teacher_topk = None
        if config.kd_coef != 0:
            if self.teacher is None:
                raise RuntimeError("ProofKDTrainer has no teacher: the plugin attaches one in post_trainer_create")
            if hasattr(self.teacher, "topk_by_position"):  # a teacher server: its top-k at each position
                ids, logps = self.teacher.topk_by_position(
                    inputs["input_ids"], inputs.get("attention_mask"), config.server_topk
                )
                k = ids.shape[-1]
                # position j + 1 holds the teacher's distribution of the token the student predicts at j
                teacher_topk = (ids[:, 1:].reshape(-1, k), logps[:, 1:].reshape(-1, k))
            else:
                teacher_hidden = self.teacher.hidden_states(inputs["input_ids"], inputs.get("attention_mask"))
                teacher_hidden = teacher_hidden[:, :-1].reshape(-1, teacher_hidden.shape[-1])
                teacher_weight = self.teacher.output_weight
        flat_labels = labels[:, 1:].reshape(-1)
        flat_proof = proof_mask[:, 1:].reshape(-1)
        stats_out = []

        def loss_head(head, hidden):
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
                ce_denominator=d_ce,
                kd_denominator=d_kd,
                chunk_size=config.chunk_size,
                kl_vocab=self.kl_vocab,
                compile=config.compile_head,
                teacher_topk=teacher_topk,
            )
            stats_out.append(stats)
            return loss

        inputs["use_cache"] = False
        with head_replaced(model, loss_head):
            outputs = model(**inputs)
        loss = outputs.logits * scale
        bucket = "train" if model.training else "eval"
        self._proofkd_stats[bucket] = self._proofkd_stats[bucket] + stats_out[0]
        if model.training:
            self._weight_used = weight
        return (loss, {}) if return_outputs else loss

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
                logs[prefix + key] = value
            if bucket == "train" and self._weight_used is not None:
                logs[prefix + "proof_weight"] = self._weight_used
        self._proofkd_stats[bucket] = LossStats.zeros()
        super().log(logs, start_time)


class JsonlLogCallback(TrainerCallback):
    """Appends every log record (with its step) to `<output_dir>/proofkd_log.jsonl` on the main process."""

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
