"""Running a causal LM with its output head swapped for our own computation.

The loss needs the final hidden states and the output weight, not the logits.
Rather than read `lm_head.weight` after the forward (which is sharded or empty
under FSDP and ZeRO-3, outside the forward), the head module's `forward` is
swapped for the duration of one call: the swapped head receives the final
hidden states exactly where the model would apply the head, inside the
model's forward, where the wrappers have gathered its weight. Whatever it
returns travels out as `outputs.logits`.

This is only right for models whose logits are `hidden @ W^T` with nothing
after it (no bias, softcapping, scaling, or adapter on the head);
`verify_linear_head` checks that once per model before training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class UnsupportedHeadError(ValueError):
    """The model's logits are not a plain linear map of its final hidden states."""


def output_head(model: nn.Module) -> nn.Module:
    """The module that maps final hidden states to logits (through DDP/PEFT wrappers)."""
    inner = getattr(model, "module", model)  # DDP / DeepSpeed engines
    head = inner.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise UnsupportedHeadError(f"{type(inner).__name__} exposes no output head with a weight")
    return head


@contextmanager
def head_replaced(model: nn.Module, fn: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, calling the model's head runs `fn(head, hidden_states)` instead."""
    head = output_head(model)
    if "forward" in vars(head):
        raise RuntimeError("the output head is already replaced; nested head_replaced() is not supported")
    head.forward = lambda hidden_states, *args, **kwargs: fn(head, hidden_states)
    try:
        yield
    finally:
        del head.forward


def final_hidden_states(model: nn.Module, **inputs) -> torch.Tensor:
    """The hidden states the head would see, `[batch, seq, hidden]`, without computing logits."""
    with head_replaced(model, lambda head, hidden: hidden):
        return model(**inputs).logits


def verify_linear_head(model: nn.Module, input_ids: torch.Tensor, *, rtol: float = 1e-3) -> None:
    """Raise `UnsupportedHeadError` unless `logits == hidden @ W^T` for this model."""
    captured = {}

    def plain_then_original(head, hidden):
        captured["plain"] = (hidden.to(head.weight.dtype) @ head.weight.T).float()
        return type(head).forward(head, hidden)

    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.float()
        with head_replaced(model, plain_then_original):
            model(input_ids=input_ids)
    plain = captured["plain"]
    scale = logits.abs().max().clamp(min=1.0)
    error = ((plain - logits).abs().max() / scale).item()
    if error > rtol:
        name = type(getattr(model, "module", model)).__name__
        raise UnsupportedHeadError(
            f"{name}: its logits differ from final_hidden_states @ output_weight^T by {error:.2g} (relative); "
            "proofkd's loss head needs a plain linear output layer (no bias, logit softcapping or scaling, "
            "and no adapter such as LoRA on lm_head)"
        )
