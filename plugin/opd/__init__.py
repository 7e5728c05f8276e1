"""On-policy distillation: the student samples, the teacher scores each sampled token, and a clipped
policy gradient follows the per-token reverse-KL estimate (see `proofkd.plugin.opd.losses`)."""
