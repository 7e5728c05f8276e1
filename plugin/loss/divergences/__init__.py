"""Divergences between the teacher's and the student's next-token distributions, one file each.

A divergence is a `Divergence` (see `base`): a per-token function of the two
log-distributions at temperature T, written for the chunked loss head (float32,
differentiable, no in-place updates, so `torch.compile` can fuse it), and its
float64 form written plainly on log-probabilities, which the tests hold the
fast function to, gradients included. Adding one is a new file here and one
line in `DIVERGENCES`.
"""

from __future__ import annotations

from proofkd.plugin.loss.divergences import forward_kl, jsd, reverse_kl
from proofkd.plugin.loss.divergences.base import Divergence

# name -> factory taking the divergence's parameters (as keywords; unknown ones are ignored)
DIVERGENCES = {
    "forward_kl": forward_kl.make,
    "reverse_kl": reverse_kl.make,
    "jsd": jsd.make,
}


def get_divergence(name: str, **params: float) -> Divergence:
    """The divergence a recipe names (`proofkd_divergence`), with its parameters (e.g. `beta` for `jsd`)."""
    if name not in DIVERGENCES:
        raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(sorted(DIVERGENCES))}")
    return DIVERGENCES[name](**params)


__all__ = ["DIVERGENCES", "Divergence", "get_divergence"]
