"""What every proofkd training plugin does before Axolotl builds anything, and how it gets its teacher.

- `register`: console logging for proofkd's own loggers; on a multi-process
  launch without an accelerator, a gloo process group
  (`proofkd.plugin.cpu_launch`); `proofkd:` embedded references resolved to
  cached paths.
- `load_datasets`: on that same launch, the models' device map corrected to
  the CPU; then Axolotl loads the data as usual.
- `pre_model_load`: before the student is loaded, refuses a teacher whose
  tokenizer is not the student's as the run loads it (Axolotl's
  `load_tokenizer`, with the recipe's added tokens), once per run.
- `teacher(cfg, trainer)`: after the trainer is built, the teacher
  (`proofkd.plugin.teacher.load_teacher`: in process or a server client)
  and the vocabulary rows its KL runs over.
"""

from __future__ import annotations

from axolotl.integrations.base import BasePlugin

from proofkd.core.logs import enable_console_logging
from proofkd.plugin import cpu_launch
from proofkd.plugin.heads import output_head
from proofkd.plugin.references import resolve_embedded_references
from proofkd.plugin.teacher import Teacher, check_teacher_tokenizer, kl_vocab_rows, load_teacher


class TrainingPlugin(BasePlugin):
    """The shared steps of `ProofKDPlugin` and `OPDPlugin` (see the module docstring)."""

    _tokenizer_checked = False

    def needs_teacher(self, cfg) -> bool:
        """Whether this run distils from a teacher at all."""
        return True

    def register(self, cfg):
        enable_console_logging()
        if cpu_launch.is_cpu_multiprocess():
            cpu_launch.start_cpu_process_group()
        resolve_embedded_references(cfg)

    def load_datasets(self, cfg, preprocess=False):
        if cpu_launch.is_cpu_multiprocess():
            cpu_launch.place_models_on_cpu(cfg)
        return None

    def pre_model_load(self, cfg):
        # Once: on the GRPO path Axolotl loads a second model (the reference) through the same hook.
        if self._tokenizer_checked or not self.needs_teacher(cfg) or not cfg.proofkd_teacher:
            return
        from axolotl.loaders import load_tokenizer

        check_teacher_tokenizer(cfg, load_tokenizer(cfg))  # the tokenizer the run's data and trainer get
        self._tokenizer_checked = True

    def teacher(self, cfg, trainer) -> tuple[Teacher, int]:
        """The run's teacher, placed for the trainer's launch, and the vocabulary rows of its KL."""
        teacher = load_teacher(cfg, trainer.accelerator, trainer.accelerator.device)
        student_rows = output_head(trainer.model).weight.shape[0]
        return teacher, kl_vocab_rows(teacher, trainer.processing_class, student_rows)
