"""The training wing: the Axolotl plugin and what it is made of.

`proofkd.plugin.ProofKDPlugin` is what a Stage-1 distillation recipe lists
under `plugins:`, `proofkd.plugin.OPDPlugin` what an on-policy distillation
recipe lists; `proofkd.plugin.EmbeddedReferencesPlugin` lets any other recipe
name `proofkd:` models and data. All are imported lazily so that
`proofkd.plugin.loss` and friends load without Axolotl.
"""

from __future__ import annotations

__all__ = ["EmbeddedReferencesPlugin", "OPDPlugin", "ProofKDPlugin"]


def __getattr__(name: str):
    if name == "ProofKDPlugin":
        from proofkd.plugin.plugin import ProofKDPlugin

        return ProofKDPlugin
    if name == "OPDPlugin":
        from proofkd.plugin.opd.plugin import OPDPlugin

        return OPDPlugin
    if name == "EmbeddedReferencesPlugin":
        from proofkd.plugin.references import EmbeddedReferencesPlugin

        return EmbeddedReferencesPlugin
    raise AttributeError(f"module 'proofkd.plugin' has no attribute {name!r}")
