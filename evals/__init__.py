"""The evaluation wing: lm-eval tasks and the side-by-side report. Imports nothing from `proofkd.plugin`."""
