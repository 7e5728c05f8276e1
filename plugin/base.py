"""What every proofkd training plugin does before Axolotl builds anything.

- `register`: console logging for proofkd's own loggers; on a multi-process
  launch without an accelerator, a gloo process group
  (`proofkd.plugin.cpu_launch`); `proofkd:` embedded references resolved to
  cached paths.
- `load_datasets`: on that same launch, the models' device map corrected to
  the CPU; then Axolotl loads the data as usual.
"""

from __future__ import annotations

from axolotl.integrations.base import BasePlugin

from proofkd.core.logs import enable_console_logging
from proofkd.plugin import cpu_launch
from proofkd.plugin.references import resolve_embedded_references


class TrainingPlugin(BasePlugin):
    """The shared first steps of `ProofKDPlugin` and `OPDPlugin` (see the module docstring)."""

    def register(self, cfg):
        enable_console_logging()
        if cpu_launch.is_cpu_multiprocess():
            cpu_launch.start_cpu_process_group()
        resolve_embedded_references(cfg)

    def load_datasets(self, cfg, preprocess=False):
        if cpu_launch.is_cpu_multiprocess():
            cpu_launch.place_models_on_cpu(cfg)
        return None
