"""The export wing: HF checkpoint to GGUF, quantisation, verification, publishing. Imports nothing from `proofkd.plugin`."""
