"""The shared core: what more than one wing needs.

Templates and markers, the embedded references, tokenisation with proof
spans, the data manifests and builder, the reward rule, atomic I/O and
logging. The wings (`proofkd.plugin`, `proofkd.evals`, `proofkd.export`)
import it; it imports none of them, nor `proofkd.cli`.
"""
