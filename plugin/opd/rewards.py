"""Reward functions for Axolotl's GRPO path (`trl.reward_funcs`), on the rule-based rewards of the core."""

from __future__ import annotations

from proofkd.core.rewards import dapo_reward


def _text(completion) -> str:
    """A completion is a string, or (conversational data) a list of messages whose first holds the text."""
    if isinstance(completion, list):
        return completion[0].get("content", "") if completion else ""
    return completion


def dapo_math_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """DAPO's reward: +1 when the last `Answer:` line matches the row's `answer`, else -1."""
    return [dapo_reward(_text(c), a) for c, a in zip(completions, answer, strict=True)]
