"""The Stage-1 loss: proof-weighted cross-entropy mixed with a temperature-scaled KL.

For the valid tokens i of an optimizer step (label not `ignore_index`), with
student logits z_i, teacher logits t_i, label y_i, and c_i = w(step) on
derivation tokens and 1 elsewhere:

    CE_w = sum_i c_i * CE(z_i, y_i) / D_ce
    KL   = sum_i Div(softmax(t_i / T), softmax(z_i / T)) / D_kd
    loss = ce_coef * CE_w + kd_coef * T^2 * KL        (0.55, 0.45, T = 2)

Div is the divergence a recipe chooses (`proofkd.plugin.loss.divergences`):
KL(teacher || student) by default, as the published recipe; KL(student ||
teacher) or the generalised JSD with weight beta otherwise. The logged
`kl` is Div.

Normalisation: D_kd is the number of valid tokens and, by default, D_ce is
the sum of the weights c_i (so CE_w is a weighted mean and the 0.55/0.45 mix
keeps its meaning while w decays); with `ce_normalization: tokens` D_ce is the
number of valid tokens instead. The trainer takes both over the whole optimizer
step (every micro-batch of the accumulation window, every rank), so the loss
does not depend on how a batch is split. The KL runs over the vocabulary rows
that student and teacher share (the first min(V_s, V_t)); the CE over all of
the student's rows.

`proof_kd_loss` is the fast path (`proof_kd`, on the chunked base in
`chunked`); `proof_kd_loss_float64` the float64 one.
"""

from proofkd.plugin.loss.chunked import auto_chunk_size
from proofkd.plugin.loss.divergences import DIVERGENCES, Divergence, get_divergence
from proofkd.plugin.loss.float64 import proof_kd_loss_float64
from proofkd.plugin.loss.proof_kd import proof_kd_loss
from proofkd.plugin.loss.stats import LossStats

__all__ = [
    "DIVERGENCES",
    "Divergence",
    "LossStats",
    "auto_chunk_size",
    "get_divergence",
    "proof_kd_loss",
    "proof_kd_loss_float64",
]
