"""Logging for proofkd's modules.

Axolotl installs a logger class that attaches, to every logger not named
`axolotl...`, a filter dropping records below WARNING; proofkd's progress lines
would vanish under `axolotl train`. So modules take their logger from
`get_logger`, which removes that filter, and the plugin and the CLI call
`enable_console_logging()` to print `proofkd` records, with the rank in front
under a multi-process launch.
"""

from __future__ import annotations

import logging
import os
import sys

_MARK = "_proofkd_console"
_AXOLOTL_FILTER = "AxolotlOrWarnErrorFilter"


def get_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` without Axolotl's below-WARNING filter."""
    logger = logging.getLogger(name)
    for f in list(logger.filters):
        if type(f).__name__ == _AXOLOTL_FILTER:
            logger.removeFilter(f)
    return logger


def enable_console_logging(level: int = logging.INFO) -> None:
    logger = get_logger("proofkd")
    if any(getattr(h, _MARK, False) for h in logger.handlers):
        return
    rank = os.environ.get("RANK")
    where = f" [rank {rank}]" if rank is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[%(asctime)s] [%(levelname)s] [%(name)s]{where} %(message)s"))
    setattr(handler, _MARK, True)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
