"""The training wing: the Axolotl plugin and what it is made of.

`proofkd.plugin.ProofKDPlugin` is what a recipe lists under `plugins:`. It is
imported lazily so that `proofkd.plugin.loss` and friends load without Axolotl.
"""

from __future__ import annotations

__all__ = ["ProofKDPlugin"]


def __getattr__(name: str):
    if name == "ProofKDPlugin":
        from proofkd.plugin.plugin import ProofKDPlugin

        return ProofKDPlugin
    raise AttributeError(f"module 'proofkd.plugin' has no attribute {name!r}")
