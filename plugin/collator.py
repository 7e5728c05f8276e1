"""Batches Stage-1 rows: Axolotl's seq2seq padding, plus the derivation mask padded alike."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DataCollatorForSeq2Seq

# Per-row bookkeeping the model never sees.
_DROPPED = ("proofkd_span_status",)


@dataclass
class ProofSpanCollator(DataCollatorForSeq2Seq):
    """Pads `proof_mask` with 0 on the tokenizer's padding side, to the padded batch length."""

    def __call__(self, features, return_tensors=None):
        features = [dict(f) for f in features]
        masks = []
        for feature in features:
            if "proof_mask" not in feature:
                raise KeyError(
                    "a batch row has no proof_mask: train with "
                    "`type: proofkd.plugin.prompt_strategies.stage1` (or another strategy that sets it)"
                )
            masks.append(list(feature.pop("proof_mask")))
            for key in _DROPPED:
                feature.pop(key, None)
        batch = super().__call__(features, return_tensors=return_tensors)
        length = batch["input_ids"].shape[1]
        left = self.tokenizer.padding_side == "left"
        padded = [([0] * (length - len(m)) + m) if left else (m + [0] * (length - len(m))) for m in masks]
        batch["proof_mask"] = torch.tensor(padded, dtype=torch.long)
        return batch
