"""Making Axolotl's multi-process launch work on a machine without an accelerator.

Axolotl 0.19 assumes that a multi-process run has GPUs. Launched with
`axolotl train cfg.yml --launcher torchrun -- --nproc_per_node N` on a CPU,
every rank would (1) build a non-distributed accelerate state, so its
barriers do nothing and all ranks prepare the dataset at once, (2) map its
model to the GPU numbered by its local rank, and (3) train alone on all the
data. Each function below undoes one of these; the plugin calls them from
the hooks that run early enough. With them, the ranks form a gloo process
group and train one DDP model, which is how the plugin's distributed code
(step totals reduced across ranks, per-rank teachers) is tested without GPUs.
"""

from __future__ import annotations

import os

import torch

from proofkd.core.logs import get_logger

LOG = get_logger(__name__)


def is_cpu_multiprocess() -> bool:
    """A launch of several processes on a machine with no accelerator."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()


def start_cpu_process_group() -> None:
    """Initialise accelerate's shared state as multi-CPU (gloo) before Axolotl creates it.

    Axolotl resets that state before it builds the trainer's `Accelerator`; the
    environment variable makes the rebuilt state multi-CPU as well.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    os.environ["ACCELERATE_USE_CPU"] = "true"
    state = PartialState(cpu=True)
    if state.distributed_type != DistributedType.MULTI_CPU:
        PartialState._reset_state()
        state = PartialState(cpu=True)
    LOG.info("CPU launch: rank %d of %d joined a gloo process group", state.process_index, state.num_processes)


def place_models_on_cpu(cfg) -> None:
    """Replace the GPU device map Axolotl gives each rank with plain CPU placement."""
    cfg.device_map = None
