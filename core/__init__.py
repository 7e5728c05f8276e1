"""proofkd: proof-weighted and on-policy distillation of small reasoning models.

The package root is the shared core (templates, embedded default, data,
atomic I/O). The wings hang under it: `proofkd.plugin` (training, imported
by Axolotl), `proofkd.evals` (lm-eval tasks), `proofkd.export` (GGUF), and
`proofkd.cli` on top. The core imports none of them.
"""

__version__ = "0.1.0"
