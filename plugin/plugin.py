"""`ProofKDPlugin`: Stage-1 proof-weighted distillation from an online teacher, inside Axolotl.

List it in a recipe:

    plugins:
      - proofkd.plugin.ProofKDPlugin
    proofkd_teacher: Qwen/Qwen3-30B-A3B-Instruct-2507
    datasets:
      - path: ...
        type: proofkd.plugin.prompt_strategies.stage1

What each Axolotl hook does here:

- `register`: resolves `proofkd:` embedded references (models, data) to cached
  paths, and keys the prepared-dataset folder on the proof markers, since
  Axolotl's own dataset hash does not cover plugin settings. A multi-process
  launch without an accelerator joins a gloo process group here.
- `load_datasets`: runs after Axolotl normalises the config and before the
  model loads; it only corrects the device map of a multi-process launch on a
  machine without an accelerator (`proofkd.plugin.cpu_launch`), then lets
  Axolotl load the data as usual.
- `pre_model_load`: refuses a teacher whose tokenizer differs from the
  student's, before the student is loaded (with a teacher server, when
  `proofkd_teacher` names the served model's tokenizer); see
  `proofkd.plugin.base`.
- `get_trainer_cls`, `get_collator_cls_and_kwargs`, `get_training_args`: the
  trainer, the collator that pads `proof_mask`, and `remove_unused_columns:
  false` so the mask reaches the trainer.
- `post_trainer_create`: loads the teacher on each rank's device (or connects
  to the teacher server, or opens the teacher cache and checks that it holds
  every row) through `proofkd.plugin.teacher.load_teacher`,
  checks both output heads and the vocabulary rows, attaches the teacher,
  and logs how many rows had a whole, truncated or missing derivation.
"""

from __future__ import annotations

import hashlib
from collections import Counter

from proofkd.core.logs import get_logger
from proofkd.core.templates import FINAL_ANSWER_MARKER, PROOF_MARKER
from proofkd.core.tokenize import SpanStatus
from proofkd.plugin.base import TrainingPlugin
from proofkd.plugin.collator import ProofSpanCollator
from proofkd.plugin.heads import verify_linear_head
from proofkd.plugin.profile import PartClockCallback
from proofkd.plugin.teacher_cache import CachedTeacher
from proofkd.plugin.trainer import JsonlLogCallback, ProofKDConfig, ProofKDTrainer

LOG = get_logger(__name__)

PLUGIN_PATH = "proofkd.plugin.ProofKDPlugin"
DEFAULT_PREPARED_PATH = "last_run_prepared"


def data_fingerprint(cfg) -> str:
    """A short hash of the plugin settings that change tokenised rows."""
    markers = (
        cfg.get("proofkd_proof_start_marker") or PROOF_MARKER,
        cfg.get("proofkd_proof_end_marker") or FINAL_ANSWER_MARKER,
    )
    return hashlib.sha256("\x00".join(markers).encode()).hexdigest()[:10]


def count_span_statuses(dataset) -> Counter | None:
    column = "proofkd_span_status"
    names = getattr(dataset, "column_names", None)
    if not names or column not in names:
        return None
    return Counter(SpanStatus(v).name.lower() for v in dataset[column])


def report_span_statuses(cfg, name: str, counts: Counter | None) -> None:
    """Log how many rows carry a derivation; warn when none does, since the proof weight then does nothing."""
    if not counts:
        return
    LOG.info(
        "proofkd %s rows: %d with the whole derivation, %d with it cut by sequence_len "
        "(the part inside the window is weighted), %d without a derivation (weight 1 throughout)",
        name,
        counts["whole"],
        counts["truncated"],
        counts["none"],
    )
    if counts["whole"] + counts["truncated"] == 0:
        start = cfg.get("proofkd_proof_start_marker") or PROOF_MARKER
        end = cfg.get("proofkd_proof_end_marker") or FINAL_ANSWER_MARKER
        LOG.warning(
            "proofkd: none of the %d %s rows has a derivation between %r and %r, so the proof weight changes "
            "nothing and ce_proof is not logged. Check that the assistant turns hold both markers in that order "
            "(or set proofkd_proof_start_marker / proofkd_proof_end_marker to the markers the data uses)",
            counts["none"],
            name,
            start,
            end,
        )


class ProofKDPlugin(TrainingPlugin):
    """Axolotl plugin for proof-weighted KD with an online teacher (see module docstring)."""

    def get_input_args(self):
        return "proofkd.plugin.args.ProofKDArgs"

    def register(self, cfg):
        super().register(cfg)
        prepared = cfg.get("dataset_prepared_path") or DEFAULT_PREPARED_PATH
        cfg["dataset_prepared_path"] = f"{prepared}/proofkd-{data_fingerprint(cfg)}"

    def needs_teacher(self, cfg) -> bool:
        return bool(cfg.proofkd_kd_coef)

    def get_trainer_cls(self, cfg):
        return ProofKDTrainer

    def get_training_args(self, cfg):
        return {"remove_unused_columns": False}

    def get_collator_cls_and_kwargs(self, cfg, is_eval=False):
        return ProofSpanCollator, {}

    def post_trainer_create(self, cfg, trainer):
        if not isinstance(trainer, ProofKDTrainer):
            raise TypeError(
                f"{PLUGIN_PATH} needs its own trainer, but {type(trainer).__name__} was built; "
                "remove trainer_cls and other plugins that replace the trainer"
            )
        model = trainer.model
        verify_linear_head(model, model.get_input_embeddings().weight.new_ones(1, 8, dtype=int))
        teacher, kl_vocab = None, None
        if self.needs_teacher(cfg):
            teacher, kl_vocab = self.teacher(cfg, trainer)
            if isinstance(teacher, CachedTeacher):
                teacher.check_rows({"train": trainer.train_dataset, "eval": trainer.eval_dataset})
            if teacher.vocab_rows is None:
                LOG.info("the KL runs over the teacher's top-%d tokens at each position", teacher.topk)
        trainer.attach(ProofKDConfig.from_cfg(cfg), teacher, kl_vocab)
        for name, dataset in (("train", trainer.train_dataset), ("eval", trainer.eval_dataset)):
            report_span_statuses(cfg, name, count_span_statuses(dataset))

    def add_callbacks_post_trainer(self, cfg, trainer):
        return [JsonlLogCallback(), PartClockCallback(trainer.clock)]
