"""Axolotl prompt strategy for the Stage-1 template, with a per-token derivation mask.

Use it in a recipe as

    datasets:
      - path: 0xZee/dataset-CoT-Physics-2254
        type: proofkd.plugin.prompt_strategies.stage1

Each row needs the string columns `question`, `CoT` and `response`. The row
is rendered (`proofkd.core.templates.render_stage1`), tokenised once with character
offsets, and every token whose first character lies in the derivation gets
`proof_mask = 1` (`proofkd.core.tokenize.tokenize_stage1`). The mask therefore
follows the tokenizer's own merges; no token ids are guessed.

Rows are handled on purpose when the derivation is not whole:

- no derivation (empty `CoT`): every token weighs 1;
- derivation cut by `sequence_len`: the tokens that remain inside it are
  weighted, everything else weighs 1;

and each row records which case it was in `proofkd_span_status`, which the
plugin counts into the training log.

`train_on_inputs: true` trains on every token (the published recipe: other
tokens weigh 1); `false` masks the instruction and the problem, up to and
including `Proof:`.
"""

from __future__ import annotations

from axolotl.prompt_tokenizers import PromptTokenizingStrategy

from proofkd.core.templates import FINAL_ANSWER_MARKER, PROOF_MARKER
from proofkd.core.tokenize import STAGE1_COLUMNS, SpanStatus, tokenize_stage1

__all__ = ["SpanStatus", "Stage1ProofStrategy", "load"]

PLUGIN = "proofkd.plugin.ProofKDPlugin"


class _NoPrompter:
    """The template is fixed by the recipe; Axolotl's prompter slot stays empty."""


class Stage1ProofStrategy(PromptTokenizingStrategy):
    def __init__(
        self,
        tokenizer,
        *,
        train_on_inputs: bool,
        sequence_len: int,
        start_marker: str = PROOF_MARKER,
        end_marker: str = FINAL_ANSWER_MARKER,
    ):
        super().__init__(_NoPrompter(), tokenizer, train_on_inputs, sequence_len)
        self.start_marker = start_marker
        self.end_marker = end_marker

    @property
    def supports_batched(self) -> bool:
        return True

    def tokenize_prompt(self, prompt: dict) -> dict:
        missing = [c for c in STAGE1_COLUMNS if c not in prompt]
        if missing:
            raise KeyError(
                f"the Stage-1 strategy needs the columns {list(STAGE1_COLUMNS)}; this dataset lacks {missing} "
                f"(it has {sorted(prompt)})"
            )
        out: dict[str, list] = {}
        for question, cot, response in zip(*(prompt[c] for c in STAGE1_COLUMNS), strict=True):
            row = tokenize_stage1(
                self.tokenizer,
                question or "",
                cot or "",
                response or "",
                sequence_len=self.sequence_len,
                train_on_inputs=self.train_on_inputs,
                start_marker=self.start_marker,
                end_marker=self.end_marker,
            )
            for key, value in row.items():
                out.setdefault(key, []).append(value)
        return out


def _require_plugin(cfg) -> None:
    """Without the plugin the mask would be dropped and training would silently be plain SFT."""
    if PLUGIN not in (cfg.plugins or []):
        raise ValueError(f"the proofkd Stage-1 strategy needs its plugin: add `plugins: [{PLUGIN}]` to the config")
    from axolotl.integrations.base import PluginManager

    if PLUGIN not in PluginManager.get_instance().plugins:
        raise ValueError(f"{PLUGIN} is listed under plugins but did not load; see the import error above")


def load(tokenizer, cfg, ds_cfg=None):
    _require_plugin(cfg)
    return Stage1ProofStrategy(
        tokenizer,
        train_on_inputs=bool(cfg.train_on_inputs),
        sequence_len=int(cfg.sequence_len),
        start_marker=cfg.proofkd_proof_start_marker or PROOF_MARKER,
        end_marker=cfg.proofkd_proof_end_marker or FINAL_ANSWER_MARKER,
    )
