"""`OPDPlugin`: on-policy distillation on Axolotl's GRPO path.

    plugins:
      - proofkd.plugin.OPDPlugin
    rl: grpo
    proofkd_teacher: lllyx/Qwen3-4B-Base-GRPO      # or proofkd_teacher_server: http://host:8000/v1
    proofkd_opd_estimator: k1
    trl:
      reward_funcs: [proofkd.plugin.opd.rewards.dapo_math_reward]
      ...

What each Axolotl hook does here:

- `register`: resolves `proofkd:` references; joins a gloo process group on a
  multi-process CPU launch (as the Stage-1 plugin does).
- `get_training_args`: forwards `trl.chat_template_kwargs` and
  `trl.generation_kwargs`, which Axolotl 0.19 validates but does not pass to
  TRL's GRPO config (the published recipe needs `enable_thinking: false`).
- `post_model_load`: keeps the model, since Axolotl's RL builder gives a
  plugin's trainer none. Only the first: Axolotl then loads the model a
  second time as GRPO's reference (even with `beta: 0`), and that copy must
  not be the one trained, since Axolotl saves the first.
- `pre_model_load`: refuses a teacher whose tokenizer is not the student's,
  before the student loads (as the Stage-1 plugin does; `proofkd.plugin.base`).
- `post_trainer_create`: loads the teacher (in process, placed per rank like
  the Stage-1 teacher; or a client of the teacher server) through
  `proofkd.plugin.teacher.load_teacher`, checks the vocabulary rows, and
  attaches it.
"""

from __future__ import annotations

from proofkd.core.logs import get_logger
from proofkd.plugin.base import TrainingPlugin
from proofkd.plugin.opd.trainer import OPDConfig, OPDTrainer
from proofkd.plugin.profile import PartClockCallback
from proofkd.plugin.trainer import JsonlLogCallback

LOG = get_logger(__name__)


class OPDPlugin(TrainingPlugin):
    """Axolotl plugin for on-policy distillation (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.model = None

    def get_input_args(self):
        return "proofkd.plugin.args.OPDArgs"

    def get_training_args(self, cfg):
        trl = cfg.trl or {}
        forwarded = {}
        for key in ("chat_template_kwargs", "generation_kwargs"):
            value = trl.get(key) if isinstance(trl, dict) else getattr(trl, key, None)
            if value:
                forwarded[key] = dict(value)
        return forwarded

    def post_model_load(self, cfg, model):
        if self.model is None:
            self.model = model

    def get_trainer_cls(self, cfg):
        return OPDTrainer

    def post_trainer_create(self, cfg, trainer):
        if not isinstance(trainer, OPDTrainer):
            raise TypeError(f"proofkd.plugin.OPDPlugin needs its own trainer, but {type(trainer).__name__} was built")
        teacher, _ = self.teacher(cfg, trainer)  # OPD scores sampled tokens; the rows are only checked
        trainer.attach(OPDConfig.from_cfg(cfg), teacher)

    def add_callbacks_post_trainer(self, cfg, trainer):
        return [JsonlLogCallback(), PartClockCallback(trainer.clock)]
