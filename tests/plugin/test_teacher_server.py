"""The teacher-server client against a real HTTP server that this test starts on localhost.

The server speaks the part of vLLM's OpenAI-compatible `/v1/completions` that
OPD uses (`prompt_logprobs`), computed from the tiny teacher model, so the
client's scores can be held to the in-process teacher's on the same batch. A
script of answers per request lets the tests make it fail, stall and recover.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from proofkd.plugin.teacher import InProcessTeacher
from proofkd.plugin.teacher_server import ServerTeacher, TeacherServerError

MODEL_NAME = "tiny-teacher"


class FakeVLLM:
    """A local server: `/v1/completions` with `prompt_logprobs` from a real model, or scripted failures."""

    def __init__(self, model):
        self.model = model
        self.script: list = []  # per request: "ok", an HTTP status, ("sleep", s), "no-logprobs", "few-choices"
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
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

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


@pytest.fixture(scope="module")
def teacher_model(tiny):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny["teacher"], dtype=torch.float32).eval()


def rollout_batch(seed: int, rows: int = 5, prompt: int = 7, completion: int = 6):
    """Token ids as GRPO lays them out: prompts left-padded, completions right-padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 600, (rows, prompt + completion), generator=g)
    mask = torch.ones_like(ids)
    for b in range(rows):
        left = int(torch.randint(0, prompt - 1, (1,), generator=g))
        right = int(torch.randint(0, completion, (1,), generator=g)) if b else 0
        mask[b, :left] = 0
        mask[b, prompt + completion - right :] = 0
        ids[b, :left] = 0
        ids[b, prompt + completion - right :] = 0
    return ids, mask, completion


def test_server_scores_equal_the_in_process_teacher(teacher_model, seed):
    ids, mask, completion = rollout_batch(seed)
    local = InProcessTeacher(teacher_model, teacher_model.lm_head.weight.detach(), torch.device("cpu"))
    expected = local.score(ids, mask, completion, topk=4)
    with FakeVLLM(teacher_model) as server:
        client = ServerTeacher(server.url, MODEL_NAME, timeout=30, retries=1, rows_per_request=2)
        got = client.score(ids, mask, completion, topk=4)
        assert len(server.requests) == 3  # 5 rows, 2 per request
        assert server.requests[0]["body"]["prompt_logprobs"] == 4
        assert server.requests[0]["body"]["prompt"][0] == ids[0][mask[0].bool()].tolist()
    on = mask[:, -completion:].bool()
    assert torch.allclose(got.logps[on], expected.logps[on], atol=1e-4)
    assert torch.equal(got.topk_ids[on], expected.topk_ids[on])
    assert torch.allclose(got.topk_logps[on], expected.topk_logps[on], atol=1e-4)


def test_server_errors_are_retried_then_succeed(teacher_model, seed):
    ids, mask, completion = rollout_batch(seed, rows=2)
    with FakeVLLM(teacher_model) as server:
        server.script = [503, 502, "ok"]
        client = ServerTeacher(server.url, MODEL_NAME, timeout=30, retries=3, pause=0.01)
        scores = client.score(ids, mask, completion)
        assert len(server.requests) == 3
    assert torch.isfinite(scores.logps).all() and scores.topk_ids is None


def test_a_refused_request_fails_at_once_naming_the_model(teacher_model, seed):
    ids, mask, completion = rollout_batch(seed, rows=2)
    with FakeVLLM(teacher_model) as server:
        client = ServerTeacher(server.url, "wrong-name", timeout=30, retries=3, pause=0.01)
        with pytest.raises(TeacherServerError, match=r"refused the request \(404\).*'wrong-name'"):
            client.score(ids, mask, completion)
        assert len(server.requests) == 1


def test_a_stalled_server_times_out_after_every_attempt(teacher_model, seed):
    ids, mask, completion = rollout_batch(seed, rows=1)
    with FakeVLLM(teacher_model) as server:
        server.script = [("sleep", 1.5), ("sleep", 1.5)]
        client = ServerTeacher(server.url, MODEL_NAME, timeout=0.3, retries=2, pause=0.01)
        with pytest.raises(TeacherServerError, match=r"in 2 attempts \(timeout 0.3 s each\).*Timeout"):
            client.score(ids, mask, completion)


def test_an_unreachable_server_says_so():
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as probe:
        port = probe.server_address[1]  # a port that was free a moment ago and is closed now
    client = ServerTeacher(f"http://127.0.0.1:{port}/v1", MODEL_NAME, timeout=2, retries=2, pause=0.01)
    ids, mask = torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(TeacherServerError, match="ConnectionError.*Is it running and reachable"):
        client.score(ids, mask, 2)


@pytest.mark.parametrize(
    ("action", "message"), [("no-logprobs", "returned no prompt_logprobs"), ("few-choices", "answered 1 choices for 2")]
)
def test_an_answer_without_what_opd_needs_is_refused(teacher_model, seed, action, message):
    ids, mask, completion = rollout_batch(seed, rows=2)
    with FakeVLLM(teacher_model) as server:
        server.script = [action]
        with pytest.raises(TeacherServerError, match=message):
            ServerTeacher(server.url, MODEL_NAME, retries=1).score(ids, mask, completion)


def test_bad_client_settings_are_refused():
    with pytest.raises(ValueError, match="retries >= 1"):
        ServerTeacher("http://127.0.0.1:1/v1", MODEL_NAME, retries=0)
