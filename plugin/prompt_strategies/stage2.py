"""Axolotl prompt strategy for the Stage-2 legal SFT format (plain SFT: no plugin needed).

    datasets:
      - path: data/stage2_sft/train.jsonl
        ds_type: json
        type: proofkd.plugin.prompt_strategies.stage2

Rows have `instruction`, `input` and `output` (Lawyer-Instruct's schema) and
train as

    ### Instruction:
    {instruction}
    ### Response:
    {output}

The text is tokenised whole, once, as a trainer given the formatted text would;
Axolotl's user-defined formats tokenise prompt and response apart, which can
change the tokens where they meet. `train_on_inputs: false` masks everything
up to and including `### Response:`.
"""

from __future__ import annotations

from axolotl.prompt_tokenizers import PromptTokenizingStrategy

from proofkd.core.tokenize import tokenize_stage2

COLUMNS = ("instruction", "output")


class _NoPrompter:
    """The format is fixed; Axolotl's prompter slot stays empty."""


class Stage2Strategy(PromptTokenizingStrategy):
    @property
    def supports_batched(self) -> bool:
        return True

    def tokenize_prompt(self, prompt: dict) -> dict:
        missing = [c for c in COLUMNS if c not in prompt]
        if missing:
            raise KeyError(
                f"the Stage-2 strategy needs the columns instruction, output (and optionally input); "
                f"this dataset lacks {missing} (it has {sorted(prompt)})"
            )
        extra = prompt.get("input") or [""] * len(prompt["instruction"])
        out: dict[str, list] = {}
        for instruction, extra_input, output in zip(prompt["instruction"], extra, prompt["output"], strict=True):
            row = tokenize_stage2(
                self.tokenizer,
                instruction or "",
                extra_input or "",
                output or "",
                sequence_len=self.sequence_len,
                train_on_inputs=self.train_on_inputs,
            )
            for key, value in row.items():
                out.setdefault(key, []).append(value)
        return out


def load(tokenizer, cfg, ds_cfg=None):
    return Stage2Strategy(_NoPrompter(), tokenizer, bool(cfg.train_on_inputs), int(cfg.sequence_len))
