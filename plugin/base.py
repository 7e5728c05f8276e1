"""What every proofkd training plugin does before Axolotl builds anything, and how it gets its teacher.

- `register`: console logging for proofkd's own loggers; a refused config
  or a known stop printed as its message rather than a traceback
  (`report_errors_briefly`); an automatic resume kept off a checkpoint that
  a killed run left half written (`skip_incomplete_checkpoint`); on a
  multi-process launch without an accelerator, a gloo process group
  (`proofkd.plugin.cpu_launch`); `proofkd:` embedded references resolved to
  cached paths.
- `load_datasets`: on that same launch, the models' device map corrected to
  the CPU; then Axolotl loads the data as usual.
- `pre_model_load`: before the student is loaded, refuses a teacher whose
  tokenizer is not the student's as the run loads it (Axolotl's
  `load_tokenizer`, with the recipe's added tokens), once per run; with
  `proofkd_teacher_cache`, a cache that is not whole or was built for
  other inputs instead.
- `teacher(cfg, trainer)`: after the trainer is built, the teacher
  (`proofkd.plugin.teacher.load_teacher`: in process or a server client)
  and the vocabulary rows its KL runs over.
"""

from __future__ import annotations

import sys
from pathlib import Path

from axolotl.integrations.base import BasePlugin

from proofkd.core.logs import enable_console_logging, get_logger
from proofkd.plugin import cpu_launch
from proofkd.plugin.args import CONFIG_REFUSED, config_error_lines
from proofkd.plugin.heads import output_head
from proofkd.plugin.references import resolve_embedded_references
from proofkd.plugin.teacher import (
    Teacher,
    TeacherOutputError,
    check_teacher_tokenizer,
    kl_vocab_rows,
    load_teacher,
)
from proofkd.plugin.teacher_cache import CacheKey, TeacherCacheError, check_cache
from proofkd.plugin.teacher_server import TeacherServerError

LOG = get_logger(__name__)

# The Trainer writes a checkpoint's state file last, so a checkpoint without it was cut short.
CHECKPOINT_COMPLETE_MARK = "trainer_state.json"


def skip_incomplete_checkpoint(cfg) -> None:
    """With `auto_resume_from_checkpoints`, resume from the newest checkpoint that was saved whole.

    Axolotl resumes from the highest-numbered `checkpoint-N`; a run killed while saving it would then
    fail to load it. Every rank makes the same choice from the same folder, and nothing is moved or deleted.
    """
    if not cfg.get("auto_resume_from_checkpoints") or cfg.get("resume_from_checkpoint") or not cfg.get("output_dir"):
        return
    numbered = [p for p in Path(cfg["output_dir"]).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    numbered.sort(key=lambda p: int(p.name.split("-")[-1]))
    complete = [p for p in numbered if (p / CHECKPOINT_COMPLETE_MARK).is_file()]
    if not numbered or numbered[-1] in complete:
        return
    cut = numbered[-1]
    if complete:
        cfg["resume_from_checkpoint"] = str(complete[-1])
        LOG.warning("%s was not saved whole (no %s): resuming from %s", cut, CHECKPOINT_COMPLETE_MARK, complete[-1])
    else:
        cfg["auto_resume_from_checkpoints"] = False
        LOG.warning(
            "%s was not saved whole (no %s) and no earlier checkpoint is: training from step 0",
            cut,
            CHECKPOINT_COMPLETE_MARK,
        )


def report_errors_briefly() -> None:
    """Show a run's known stops (a refused config, a teacher server that stays down, a NaN teacher) as their
    message alone: Axolotl validates and trains inside its launcher, where a traceback would bury it.
    Any other error keeps its traceback."""
    previous = sys.excepthook
    if getattr(previous, "proofkd", False):
        return

    def hook(kind, error, traceback):
        lines = config_error_lines(error)
        if lines is not None:
            print(f"{CONFIG_REFUSED}:\n" + "\n".join(f"- {line}" for line in lines), file=sys.stderr, flush=True)
        elif isinstance(error, (TeacherServerError, TeacherOutputError, TeacherCacheError)):
            print(f"proofkd stopped the run: {error}", file=sys.stderr, flush=True)
        else:
            previous(kind, error, traceback)

    hook.proofkd = True
    sys.excepthook = hook


class TrainingPlugin(BasePlugin):
    """The shared steps of `ProofKDPlugin` and `OPDPlugin` (see the module docstring)."""

    _tokenizer_checked = False

    def needs_teacher(self, cfg) -> bool:
        """Whether this run distils from a teacher at all."""
        return True

    def register(self, cfg):
        enable_console_logging()
        report_errors_briefly()
        skip_incomplete_checkpoint(cfg)
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

        tokenizer = load_tokenizer(cfg)  # the tokenizer the run's data and trainer get
        if cfg.get("proofkd_teacher_cache"):
            check_cache(Path(cfg.proofkd_teacher_cache), CacheKey.from_cfg(cfg, tokenizer))
        else:
            check_teacher_tokenizer(cfg, tokenizer)
        self._tokenizer_checked = True

    def teacher(self, cfg, trainer) -> tuple[Teacher, int]:
        """The run's teacher, placed for the trainer's launch, and the vocabulary rows of its KL."""
        teacher = load_teacher(cfg, trainer.accelerator, trainer.accelerator.device, trainer.processing_class)
        student_rows = output_head(trainer.model).weight.shape[0]
        return teacher, kl_vocab_rows(teacher, trainer.processing_class, student_rows)
