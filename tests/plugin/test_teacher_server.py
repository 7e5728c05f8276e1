"""The teacher-server client against a real HTTP server that this test starts on localhost.

The server (`fake_vllm.FakeVLLM`) computes `prompt_logprobs` from the tiny
teacher model, so the client's scores can be held to the in-process teacher's
on the same batch. A script of answers per request lets the tests make it
fail, stall and recover.
"""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from proofkd.plugin.teacher import InProcessTeacher
from proofkd.plugin.teacher_server import ServerTeacher, TeacherServerError
from tests.fake_vllm import MODEL_NAME, FakeVLLM


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


@pytest.mark.parametrize("fault", ["drop", "malformed", "no-logprobs", "few-choices", 500])
def test_a_dropped_connection_or_unusable_answer_is_retried_and_counted(teacher_model, seed, fault):
    ids, mask, completion = rollout_batch(seed, rows=2)
    with FakeVLLM(teacher_model) as server:
        healthy = ServerTeacher(server.url, MODEL_NAME, retries=1).score(ids, mask, completion, topk=4)
        server.script = [fault, fault]
        client = ServerTeacher(server.url, MODEL_NAME, timeout=30, retries=3, pause=0.01)
        scores = client.score(ids, mask, completion, topk=4)
        assert len(server.requests) == 1 + 3
    assert client.counters() == {"teacher_server_retries": 2}
    assert torch.equal(scores.logps, healthy.logps) and torch.equal(scores.topk_ids, healthy.topk_ids)


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


def test_topk_by_position_is_the_teachers_distribution_at_each_position(teacher_model, seed):
    """Stage 1's view: position j holds the teacher's top-k for token j, with either padding side."""
    ids, mask, _ = rollout_batch(seed, rows=3)
    mask[2] = mask[2].flip(0)  # one row padded on the right only
    ids = ids * mask
    with FakeVLLM(teacher_model) as server:
        top_ids, top_lps = ServerTeacher(server.url, MODEL_NAME, retries=1).topk_by_position(ids, mask, topk=5)
    assert top_ids.shape == top_lps.shape == (3, ids.shape[1], 5)
    for b in range(3):
        where = mask[b].bool().nonzero().squeeze(1)
        row = ids[b, where]
        with torch.no_grad():
            log_q = torch.log_softmax(teacher_model(row[None]).logits[0].double(), -1)
        want = log_q.topk(5, dim=-1)
        # the first real token and every padding position have no teacher entry
        assert torch.isinf(top_lps[b, where[0]]).all()
        assert torch.isinf(top_lps[b, ~mask[b].bool()]).all()
        for j in range(1, len(where)):
            assert torch.equal(top_ids[b, where[j]], want.indices[j - 1])
            assert torch.allclose(top_lps[b, where[j]].double(), want.values[j - 1], atol=1e-5)


def test_both_backends_give_stage1_the_same_targets(teacher_model, seed):
    """Row i of `targets` is the teacher's distribution of the token predicted from position i, for either backend."""
    ids, mask, _ = rollout_batch(seed, rows=3)
    mask = torch.ones_like(mask)  # every position real, so every row of the targets has a distribution
    rows = teacher_model.lm_head.weight.shape[0]
    local = InProcessTeacher(teacher_model, teacher_model.lm_head.weight.detach(), torch.device("cpu"))
    full = local.targets(ids, mask)
    assert full.topk is None and full.hidden.shape == (3 * (ids.shape[1] - 1), teacher_model.config.hidden_size)
    with FakeVLLM(teacher_model) as server:
        served = ServerTeacher(server.url, MODEL_NAME, retries=1, topk=rows).targets(ids, mask)
    assert served.hidden is None and served.topk_ids.shape == (3 * (ids.shape[1] - 1), rows)
    assert local.vocab_rows == rows and ServerTeacher(server.url, MODEL_NAME).vocab_rows is None
    want = torch.log_softmax((full.hidden @ full.weight.T).double(), -1)
    got = torch.full_like(want, -float("inf")).scatter(1, served.topk_ids, served.topk_logps.double())
    assert torch.allclose(got, want, atol=1e-4)
