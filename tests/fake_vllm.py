"""A local HTTP server speaking the part of vLLM's OpenAI-compatible API that proofkd's teacher client uses.

`POST /v1/completions` with `prompt` as lists of token ids and `prompt_logprobs: k`
answers, per prompt, vLLM's shape: null for the first token, then for each
position a map from token id to `{"logprob", "rank"}` holding the top-k and the
actual token, computed from a real model in float64. `script` makes requests
fail, stall, drop the connection or answer badly, one entry per request.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

MODEL_NAME = "tiny-teacher"


class FakeVLLM:
    """A local server: `/v1/completions` with `prompt_logprobs` from a real model, or scripted failures."""

    def __init__(self, model):
        self.model = model
        # per request: "ok", an HTTP status, ("sleep", s), "drop", "malformed", "no-logprobs", "few-choices"
        self.script: list = []
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, "body": body})
                action = owner.script.pop(0) if owner.script else "ok"
                if isinstance(action, tuple) and action[0] == "sleep":
                    time.sleep(action[1])
                    action = "ok"
                if isinstance(action, int):
                    return self._send(action, {"error": {"message": f"scripted failure {action}"}})
                if action == "drop":  # the connection closes with no answer, as when a server restarts
                    self.close_connection = True
                    return None
                if action == "malformed":  # an answer cut short
                    return self._send(200, b'{"object": "text_completion", "choices": [{"ind')
                if self.path != "/v1/completions" or body.get("model") != MODEL_NAME:
                    return self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
                choices = [
                    {"index": i, "text": "", "prompt_logprobs": owner.prompt_logprobs(row, body["prompt_logprobs"])}
                    for i, row in enumerate(body["prompt"])
                ]
                if action == "no-logprobs":
                    for choice in choices:
                        choice.pop("prompt_logprobs")
                if action == "few-choices":
                    choices = choices[:-1]
                choices.reverse()  # the client must order by index, not by position
                return self._send(200, {"object": "text_completion", "model": MODEL_NAME, "choices": choices})

            def _send(self, status, payload):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left, as a stalled request's client does

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @torch.no_grad()
    def prompt_logprobs(self, row: list[int], k: int) -> list:
        """vLLM's shape: None first, then per position {token id: {logprob, rank}} with the actual token and top-k."""
        logits = self.model(torch.tensor([row])).logits[0].double()
        logps = torch.log_softmax(logits, dim=-1)
        out = [None]
        for position in range(1, len(row)):
            dist = logps[position - 1]
            order = torch.argsort(dist, descending=True)
            ranks = torch.empty_like(order)
            ranks[order] = torch.arange(1, order.numel() + 1)
            entry = {str(int(t)): {"logprob": float(dist[t]), "rank": int(ranks[t])} for t in order[:k]}
            token = row[position]
            entry[str(token)] = {"logprob": float(dist[token]), "rank": int(ranks[token])}
            out.append(entry)
        return out

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
