"""lm-eval's model interface on llama.cpp's kernels, so a GGUF file is scored as llama.cpp runs it.

lm-eval 0.4.11 offers two routes to a GGUF and neither measures llama.cpp: its
`hf` model with `gguf_file=` dequantises the weights into torch, and its `gguf`
model needs a server that returns the prompt's log-probs (llama.cpp's own
server does not). This model loads the file in llama-cpp-python, with every
position's logits, and answers lm-eval's three requests:

- `loglikelihood`: ln p of the continuation's tokens after the context, from
  llama.cpp's logits in float64, and whether each was the most likely token.
  The pair is split as lm-eval's `hf` model splits it: spaces that end the
  context move to the continuation, the continuation's tokens are those of
  context + continuation after the context's, and an empty context is the
  end-of-text token;
- `loglikelihood_rolling`: the text's tokens scored in windows of the context
  length, each window conditioned on the tokens before it (lm-eval's rolling
  windows);
- `generate_until`: greedy decoding (the argmax of llama.cpp's logits) until a
  stop string, the end-of-text token or `max_gen_toks`.

Tokens are llama.cpp's own; `proofkd verify` checks that they are the HF
tokenizer's. A chat template comes from the HF tokenizer when one is named, or
else from the file's `tokenizer.chat_template`. Run as a module, this is
lm-eval's command line with the model registered as `proofkd-gguf`.
"""

from __future__ import annotations

import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from proofkd.export.gguf_file import load_in_llama_cpp, read_gguf
from proofkd.export.verify import log_softmax64

DEFAULT_CONTEXT = 2048
DEFAULT_GEN_TOKENS = 256


@register_model("proofkd-gguf")
class LlamaCppLM(LM):
    """A GGUF file in llama-cpp-python, as an lm-eval model (`pretrained=FILE.gguf[,tokenizer=HF_DIR]`)."""

    def __init__(
        self,
        pretrained: str,
        tokenizer: str | None = None,
        n_ctx: int = DEFAULT_CONTEXT,
        threads: int | None = None,
        max_gen_toks: int = DEFAULT_GEN_TOKENS,
        **lm_eval_options,  # device, batch_size, dtype: llama.cpp runs on the CPU, one request at a time
    ) -> None:
        super().__init__()
        self.path = read_gguf(pretrained).path
        self.n_ctx = int(n_ctx)
        self.max_gen_toks = int(max_gen_toks)
        self.llm = load_in_llama_cpp(
            self.path,
            n_ctx=self.n_ctx,
            n_batch=min(self.n_ctx, 512),
            logits_all=True,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        self.eot_id = self.llm.token_eos()
        self.hf_tokenizer = None
        if tokenizer:
            from transformers import AutoTokenizer

            self.hf_tokenizer = AutoTokenizer.from_pretrained(tokenizer)

    def tok_encode(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) if text else []

    def _next_token_log_probs(self, ids: list[int]) -> np.ndarray:
        """ln p of the next token at every position of `ids`, in float64."""
        self.llm.reset()
        self.llm.eval(ids)
        return log_softmax64(np.asarray(self.llm.scores[: len(ids)]))

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tok_encode(context + continuation)
        context_ids = self.tok_encode(context)
        return (context_ids or [self.eot_id]), whole[len(context_ids) :]

    def _score(self, context_ids: list[int], continuation_ids: list[int]) -> tuple[float, bool]:
        ids = (context_ids + continuation_ids)[-(self.n_ctx + 1) :]
        log_probs = self._next_token_log_probs(ids[:-1])[-len(continuation_ids) :]
        rows = np.arange(len(continuation_ids))
        chosen = log_probs[rows, continuation_ids]
        return float(chosen.sum()), bool((log_probs.argmax(axis=-1) == np.asarray(continuation_ids)).all())

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        results = []
        for request in tqdm(requests, desc=f"log-likelihoods in llama.cpp ({self.path.name})", disable=disable_tqdm):
            context_ids, continuation_ids = self._encode_pair(*request.args)
            results.append(self._score(context_ids, continuation_ids) if continuation_ids else (0.0, True))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        for request in tqdm(requests, desc=f"rolling log-likelihoods ({self.path.name})", disable=disable_tqdm):
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(request.args[0]),
                prefix_token=self.eot_id,
                max_seq_len=self.n_ctx,
                context_len=1,
            )
            results.append(sum(self._score(*make_disjoint_window(window))[0] for window in windows))
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results = []
        for request in tqdm(requests, desc=f"generating in llama.cpp ({self.path.name})", disable=disable_tqdm):
            context, options = request.args
            stops = options.get("until") or []
            stops = [stops] if isinstance(stops, str) else list(stops)
            results.append(self._greedy(context, stops, int(options.get("max_gen_toks", self.max_gen_toks))))
        return results

    def _greedy(self, context: str, stops: list[str], max_tokens: int) -> str:
        self.llm.reset()
        self.llm.eval(self.tok_encode(context)[-(self.n_ctx - max_tokens) :] or [self.eot_id])
        produced: list[int] = []
        text = ""
        while len(produced) < max_tokens:
            token = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            if token == self.eot_id:
                break
            produced.append(token)
            text = self.llm.detokenize(produced).decode("utf-8", "replace")
            cut = min((text.find(stop) for stop in stops if stop and stop in text), default=-1)
            if cut >= 0:
                return text[:cut]
            self.llm.eval([token])
        return text

    @property
    def tokenizer_name(self) -> str:
        return str(self.path)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if self.hf_tokenizer is not None:
            return self.hf_tokenizer.chat_template
        return self.llm.metadata.get("tokenizer.chat_template")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if self.hf_tokenizer is not None:
            return self.hf_tokenizer.apply_chat_template(
                chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.chat_template()
        if not template:
            raise ValueError(f"{self.path} has no chat template; name the model's HF tokenizer with tokenizer=DIR")
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self.llm.detokenize([self.eot_id]).decode("utf-8", "replace"),
            bos_token=self.llm.detokenize([self.llm.token_bos()]).decode("utf-8", "replace"),
            add_generation_prompt=add_generation_prompt,
        )
        return formatter(messages=chat_history).prompt


if __name__ == "__main__":
    # lm-eval's own command line, with this model registered: `--model proofkd-gguf --model_args pretrained=F.gguf`.
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
