"""A teacher behind an OpenAI-compatible inference server (vLLM), for teachers too big to sit beside the student.

A `proofkd.plugin.teacher.Teacher`. OPD needs only the teacher's
log-probability of each token the student sampled (`score`); Stage 1 takes
the teacher's top-k at every position (`topk_by_position`, shifted into
`targets`), over which its KL then runs. vLLM returns those for a prompt given as token ids when asked for
`prompt_logprobs`: one entry per prompt position (the first is null), each a
map from token id to `{"logprob": ..., "rank": ...}` holding the actual token
and the top-k. The client sends each sequence (prompt and completion, padding
removed) as the prompt of a one-token completion, so the server scores exactly
the student's tokens. Rows go out `rows_per_request` at a time, so a rollout
of long completions does not become one enormous answer.

Requests time out after `timeout` seconds; a request is tried `retries`
times, with a growing pause, on connection errors, 5xx answers and answers
that are not JSON or lack the log-probabilities; a 4xx answer (a wrong model
name, say) fails at once. The failed attempts are counted for the training
log (`proofkd/teacher_server_retries`). Every failure names the server and
what to check.
"""

from __future__ import annotations

import time

import requests
import torch

from proofkd.core.logs import get_logger
from proofkd.plugin.logprobs import TokenScores
from proofkd.plugin.teacher import Teacher, TeacherTargets, topk_targets

LOG = get_logger(__name__)


class TeacherServerError(RuntimeError):
    """The teacher server could not be reached or answered something unusable."""


class UnusableAnswer(TeacherServerError):
    """An answer without what was asked for: retried like a 5xx, since a restarting server can send one."""


class ServerTeacher(Teacher):
    """Scores token sequences with a teacher served over HTTP (`/completions` with `prompt_logprobs`).

    `topk` is the k of Stage 1's `targets` (`proofkd_teacher_topk`);
    OPD's `score` takes its own.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        timeout: float = 120.0,
        retries: int = 3,
        pause: float = 1.0,
        rows_per_request: int = 8,
        topk: int | None = None,
    ):
        if retries < 1 or timeout <= 0 or rows_per_request < 1 or topk is not None and topk < 1:
            raise ValueError("ServerTeacher needs retries >= 1, timeout > 0, rows_per_request >= 1 and topk >= 1")
        self.url = base_url.rstrip("/") + "/completions"
        self.model = model
        self.rows_per_request = rows_per_request
        self.timeout = timeout
        self.retries = retries
        self.pause = pause
        self.topk = topk
        self.session = requests.Session()
        self.failed_attempts = 0  # every attempt that was retried or given up on, for the log

    @classmethod
    def from_cfg(cls, cfg) -> ServerTeacher:
        """The client a recipe's `proofkd_teacher_server*` keys describe (the served name defaults to the teacher's)."""
        return cls(
            cfg.proofkd_teacher_server,
            cfg.proofkd_teacher_server_model or cfg.proofkd_teacher,
            timeout=cfg.proofkd_teacher_server_timeout,
            retries=cfg.proofkd_teacher_server_retries,
            topk=cfg.proofkd_teacher_topk,
        )

    @property
    def vocab_rows(self) -> None:
        """A server shows only its top-k, never its output layer: the KL runs over the student's rows."""
        return None

    def describe(self) -> str:
        return f"teacher served at {self.url} as {self.model}"

    def counters(self) -> dict[str, float]:
        return {"teacher_server_retries": self.failed_attempts}

    def _post(self, payload: dict, parse):
        """`parse(answer)` of the first usable answer; connection errors, 5xx and unusable answers are retried."""
        last = None
        for attempt in range(1, self.retries + 1):
            try:
                response = self.session.post(self.url, json=payload, timeout=self.timeout)
            except requests.RequestException as error:
                last = f"{type(error).__name__}: {error}"
            else:
                if 400 <= response.status_code < 500:
                    raise TeacherServerError(
                        f"teacher server {self.url} refused the request ({response.status_code}): "
                        f"{response.text[:300]}; check that it serves the model {self.model!r}"
                    )
                if response.status_code >= 500:
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                else:
                    try:
                        return parse(response.json())
                    except requests.JSONDecodeError as error:
                        last = f"an answer that is not JSON ({error}): {response.text[:100]!r}"
                    except UnusableAnswer as error:
                        last = str(error)
            self.failed_attempts += 1
            if attempt < self.retries:
                LOG.warning("teacher server %s: attempt %d failed (%s); retrying", self.url, attempt, last)
                time.sleep(self.pause * attempt)
        raise TeacherServerError(
            f"teacher server {self.url} did not answer usefully in {self.retries} attempts "
            f"(timeout {self.timeout:g} s each); last error: {last}. Is it running and reachable?"
        )

    @torch.no_grad()
    def score(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_len: int, topk: int = 0
    ) -> TokenScores:
        """Log-probabilities `[B, T]` of the last `completion_len` tokens of each row (and their top-k)."""
        rows = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids.cpu(), attention_mask.cpu(), strict=True)]
        # The completion is right-padded: row b holds real completion tokens at its last n_b real positions.
        completion_real = attention_mask[:, -completion_len:].sum(-1).tolist()
        per_row = self._entries_per_row(rows, topk)
        logps = torch.zeros(len(rows), completion_len)
        top_ids = torch.zeros(len(rows), completion_len, max(topk, 1), dtype=torch.long)
        top_lps = torch.full((len(rows), completion_len, max(topk, 1)), -float("inf"))
        for b, (row, entries, n) in enumerate(zip(rows, per_row, completion_real, strict=True)):
            for t in range(n):
                position = len(row) - n + t
                entry = entries[position]
                token = str(row[position])
                if entry is None or token not in entry:
                    raise TeacherServerError(f"teacher server {self.url}: no log-probability for token {token}")
                logps[b, t] = float(entry[token]["logprob"])
                if topk:
                    ranked = sorted(entry.items(), key=lambda kv: kv[1].get("rank", 1 << 30))[:topk]
                    for j, (tid, value) in enumerate(ranked):
                        top_ids[b, t, j] = int(tid)
                        top_lps[b, t, j] = float(value["logprob"])
        device = input_ids.device
        if not topk:
            return TokenScores(logps.to(device))
        return TokenScores(logps.to(device), top_ids.to(device), top_lps.to(device))

    @torch.no_grad()
    def targets(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> TeacherTargets:
        """The teacher's top-`topk` at positions `[:, 1:]`, flattened (j + 1 holds the token predicted from j)."""
        if self.topk is None:
            raise ValueError("ServerTeacher.targets needs the client's topk (proofkd_teacher_topk)")
        return topk_targets(*self.topk_by_position(input_ids, attention_mask, self.topk))

    @torch.no_grad()
    def topk_by_position(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, topk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's top-k ids and log-probs `[B, L, k]` for the token at each position, given what precedes it.

        Position j holds the teacher's distribution over the token at j (so
        the student's hidden state at j - 1 is held to it). Positions that are
        padding, or a row's first real token, have log-probs -inf. Padding may
        be on either side.
        """
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        batch, length = input_ids.shape
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        ids_cpu, mask_cpu = input_ids.cpu(), mask.cpu().bool()
        rows = [ids[real].tolist() for ids, real in zip(ids_cpu, mask_cpu, strict=True)]
        positions = [real.nonzero().squeeze(1).tolist() for real in mask_cpu]
        per_row = self._entries_per_row(rows, topk)
        top_ids = torch.zeros(batch, length, topk, dtype=torch.long)
        top_lps = torch.full((batch, length, topk), -float("inf"))
        for b, (row, where, entries) in enumerate(zip(rows, positions, per_row, strict=True)):
            for j in range(1, len(row)):
                if not entries[j]:
                    raise TeacherServerError(
                        f"teacher server {self.url}: no log-probabilities at position {j} of row {b}"
                    )
                ranked = sorted(entries[j].items(), key=lambda kv: kv[1].get("rank", 1 << 30))[:topk]
                for slot, (tid, value) in enumerate(ranked):
                    top_ids[b, where[j], slot] = int(tid)
                    top_lps[b, where[j], slot] = float(value["logprob"])
        return top_ids.to(input_ids.device), top_lps.to(input_ids.device)

    def _entries_per_row(self, rows: list[list[int]], topk: int) -> list[list]:
        """Each row's `prompt_logprobs` (one entry per token), asked `rows_per_request` rows at a time."""
        per_row = []
        for start in range(0, len(rows), self.rows_per_request):
            batch = rows[start : start + self.rows_per_request]
            payload = {
                "model": self.model,
                "prompt": batch,
                "max_tokens": 1,
                "temperature": 0.0,
                "prompt_logprobs": topk,
            }
            per_row += self._post(payload, lambda answer, batch=batch, start=start: self._entries(answer, batch, start))
        return per_row

    def _entries(self, answer, rows: list[list[int]], first_row: int) -> list[list]:
        """The answer's `prompt_logprobs` for `rows`, in order; `UnusableAnswer` if it lacks any."""
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or len(choices) != len(rows):
            got = len(choices) if isinstance(choices, list) else "no"
            raise UnusableAnswer(f"teacher server {self.url} answered {got} choices for {len(rows)} rows")
        choices = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        entries = []
        for offset, (row, choice) in enumerate(zip(rows, choices, strict=True)):
            found = choice.get("prompt_logprobs") if isinstance(choice, dict) else None
            if not isinstance(found, list) or len(found) != len(row):
                raise UnusableAnswer(
                    f"teacher server {self.url} returned no prompt_logprobs for row {first_row + offset}; it must "
                    "support vLLM's prompt_logprobs (vLLM's OpenAI-compatible server does)"
                )
            entries.append(found)
        return entries
