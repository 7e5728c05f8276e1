"""The teacher cache: what it stores is the teacher's top-k, it resumes, and it refuses what it was not built for."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file

from proofkd.plugin.loss import proof_kd_loss
from proofkd.plugin.teacher import InProcessTeacher, TeacherOutputError, check_finite
from proofkd.plugin.teacher_cache import (
    CachedTeacher,
    CacheKey,
    CacheManifest,
    TeacherCacheError,
    build_cache,
    check_cache,
    row_hash,
)

K = 8


@pytest.fixture(scope="module")
def teacher(tiny):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny["teacher"], dtype=torch.float32).eval()
    return InProcessTeacher(model, model.lm_head.weight.detach(), torch.device("cpu"))


def random_rows(seed: int, count: int = 7, vocab: int = 600) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 40, (count,), generator=generator).tolist()
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in lengths]


def key(**changes) -> CacheKey:
    base = CacheKey("teacher", None, "float32", "tok", "tpl", 256, K)
    return dataclasses.replace(base, **changes)


def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, rows))
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        ids[b, : len(row)], mask[b, : len(row)] = torch.tensor(row), 1
    return ids, mask


def test_in_process_top_k_is_the_float64_softmax_top_k(teacher, seed):
    ids, mask = padded(random_rows(seed, count=3))
    got_ids, got_logps = teacher.topk_by_position(ids, mask, K, chunk_size=5)
    hidden = teacher.hidden_states(ids, mask).double()
    logps = torch.log_softmax(hidden @ teacher.output_weight.double().T, -1)
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        want = logps[b, : n - 1].topk(K, dim=-1)
        torch.testing.assert_close(got_logps[b, 1:n].double(), want.values, atol=1e-5, rtol=1e-5)
        assert torch.equal(got_ids[b, 1:n], want.indices)
        assert torch.isinf(got_logps[b, 0]).all() and torch.isinf(got_logps[b, n:]).all()


@pytest.mark.parametrize("dtype, atol", [("float32", 0.0), ("float16", 2e-3)])
def test_the_cache_gives_each_row_its_live_top_k_in_any_order_and_padding(teacher, tmp_path, seed, dtype, atol):
    rows = random_rows(seed)
    build_cache(rows, teacher, key(), tmp_path, logprob_dtype=dtype, rows_per_shard=3, rows_per_batch=2)
    cached = CachedTeacher.open(tmp_path, key())
    order = list(reversed(rows[:5]))
    ids, mask = padded(order)
    got = cached.targets(ids, mask)
    live_ids, live_logps = [], []
    for row in order:  # each row alone, without padding
        one_ids, one_logps = teacher.topk_by_position(torch.tensor([row]), None, K)
        live_ids.append(one_ids[0])
        live_logps.append(one_logps[0])
    want_ids, want_logps = padded_topk(live_ids, live_logps, ids.shape[1])
    assert torch.equal(got.topk_ids.reshape(ids.shape[0], -1, K), want_ids[:, 1:])
    torch.testing.assert_close(got.topk_logps.reshape(ids.shape[0], -1, K), want_logps[:, 1:], atol=atol, rtol=1e-3)


def padded_topk(ids, logps, length):
    out_ids = torch.zeros(len(ids), length, K, dtype=torch.long)
    out_logps = torch.full((len(ids), length, K), -torch.inf)
    for b, (i, lp) in enumerate(zip(ids, logps, strict=True)):
        out_ids[b, : len(i)], out_logps[b, : len(i)] = i, lp
    return out_ids, out_logps


def test_the_loss_from_the_cache_is_the_loss_from_the_live_top_k(teacher, tmp_path, seed):
    rows = random_rows(seed, count=4)
    build_cache(rows, teacher, key(), tmp_path, logprob_dtype="float32")
    ids, mask = padded(rows)
    labels = torch.where(mask.bool(), ids, -100)[:, 1:].reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(labels.shape[0], 16, generator=generator, dtype=torch.float64).float()
    weight = torch.randn(640, 16, generator=generator, dtype=torch.float64).float()
    proof = torch.zeros_like(labels, dtype=torch.bool)

    def loss(targets):
        h = hidden.clone().requires_grad_(True)
        value, _ = proof_kd_loss(
            h, weight, None, None, labels, proof, 2.0, temperature=2.0, teacher_topk=targets.topk, topk_tail="bucket"
        )
        value.backward()
        return value.detach(), h.grad

    live = InProcessTopK(teacher)
    (got, got_grad), (want, want_grad) = (
        loss(CachedTeacher.open(tmp_path, key()).targets(ids, mask)),
        loss(live.targets(ids, mask)),
    )
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)


class InProcessTopK:
    """The live top-k path: each row alone through the teacher."""

    def __init__(self, teacher):
        self.teacher = teacher

    def targets(self, ids, mask):
        from proofkd.plugin.teacher import topk_targets

        per_row = [
            self.teacher.topk_by_position(ids[b : b + 1, : int(mask[b].sum())], None, K) for b in range(len(ids))
        ]
        return topk_targets(*padded_topk([i[0] for i, _ in per_row], [lp[0] for _, lp in per_row], ids.shape[1]))


class Interrupted(Exception):
    pass


class StopsAfter:
    """The teacher, interrupted after `calls` forwards (as Ctrl-C or a lost machine would)."""

    def __init__(self, teacher, calls: int):
        self.teacher, self.calls = teacher, calls

    def topk_by_position(self, *args):
        if self.calls == 0:
            raise Interrupted
        self.calls -= 1
        return self.teacher.topk_by_position(*args)


def shard_tensors(folder):
    return [load_file(str(path)) for path in sorted(folder.glob("shard-*.safetensors"))]


def test_an_interrupted_build_keeps_its_whole_shards_and_resumes_to_the_same_cache(teacher, tmp_path, seed):
    rows = random_rows(seed, count=9)
    options = dict(rows_per_shard=2, rows_per_batch=1)
    build_cache(rows, teacher, key(), tmp_path / "whole", **options)
    with pytest.raises(Interrupted):
        build_cache(rows, StopsAfter(teacher, 5), key(), tmp_path / "cut", **options)
    cut = CacheManifest.read(tmp_path / "cut")
    assert cut.cached_rows == 4 and not cut.complete
    with pytest.raises(TeacherCacheError, match="holds 4 of its 9 rows"):
        check_cache(tmp_path / "cut", key())
    assert not list((tmp_path / "cut").glob(".*partial*"))
    resumed = StopsAfter(teacher, 5)  # five forwards are enough for the five rows left
    build_cache(rows, resumed, key(), tmp_path / "cut", **options)
    assert resumed.calls == 0
    for got, want in zip(shard_tensors(tmp_path / "cut"), shard_tensors(tmp_path / "whole"), strict=True):
        assert got.keys() == want.keys() and all(torch.equal(got[name], want[name]) for name in got)


@pytest.mark.parametrize(
    "field, value",
    [
        ("teacher", "other"),
        ("teacher_dtype", "bfloat16"),
        ("tokenizer", "t2"),
        ("template", "x"),
        ("sequence_len", 1024),
        ("topk", 20),
    ],
)
def test_a_cache_built_for_other_inputs_is_refused_naming_what_differs(teacher, tmp_path, field, value):
    build_cache(random_rows(0, count=2), teacher, key(), tmp_path)
    asked = key(**{field: value})
    with pytest.raises(TeacherCacheError, match=rf"- {field}: the cache has .*, this run {value!r}"):
        check_cache(tmp_path, asked)
    with pytest.raises(TeacherCacheError, match=rf"holds a teacher cache built from other inputs:\n- {field}"):
        build_cache(random_rows(0, count=2), teacher, asked, tmp_path)
    build_cache(random_rows(0, count=2), teacher, asked, tmp_path, overwrite=True)
    check_cache(tmp_path, asked)


def test_other_rows_are_refused_before_training_and_in_a_batch(teacher, tmp_path):
    build_cache(random_rows(1, count=3), teacher, key(), tmp_path)
    cached = CachedTeacher.open(tmp_path, key())
    other = random_rows(2, count=3)
    with pytest.raises(TeacherCacheError, match="3 of the 3 train rows are not in the teacher cache"):
        cached.check_rows({"train": {"input_ids": other}})
    with pytest.raises(TeacherCacheError, match="row 0 of the batch"):
        cached.targets(*padded(other))
    with pytest.raises(TeacherCacheError, match="holds a teacher cache built from other inputs:\n- rows"):
        build_cache(other, teacher, key(), tmp_path)


def test_a_cut_shard_is_named(teacher, tmp_path):
    build_cache(random_rows(3, count=4), teacher, key(), tmp_path, rows_per_shard=2)
    shard = tmp_path / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(TeacherCacheError, match="shard-00001.safetensors is .* bytes, not the .* it was written"):
        CachedTeacher.open(tmp_path, key())


def test_a_nan_teacher_is_not_cached_and_a_nan_in_the_cache_stops_training(teacher, tmp_path):
    rows = random_rows(4, count=3)

    class NaNAt:
        def topk_by_position(self, ids, mask, k):
            top_ids, logps = teacher.topk_by_position(ids, mask, k)
            logps[0, 2, 0] = torch.nan
            return top_ids, logps

    with pytest.raises(TeacherOutputError, match="row 0 .* position 2; nothing of it is cached"):
        build_cache(rows, NaNAt(), key(), tmp_path / "nan")
    assert not list((tmp_path / "nan").glob("shard-*"))

    build_cache(rows, teacher, key(), tmp_path / "ok")
    shard = tmp_path / "ok" / "shard-00000.safetensors"
    tensors = load_file(str(shard))
    tensors["logps"][3, 0] = torch.nan  # row 0, the token at position 4
    save_file(tensors, str(shard))
    ids, mask = padded(rows)
    targets = CachedTeacher.open(tmp_path / "ok", key()).targets(ids, mask)
    with pytest.raises(TeacherOutputError, match="row 0, position 3"):
        check_finite(targets, mask[:, 1:].reshape(-1).bool(), ids.shape[1] - 1, "step 1")


def test_row_hash_names_the_tokens_not_their_container():
    assert row_hash([1, 2, 3]) == row_hash(torch.tensor([1, 2, 3])) != row_hash([1, 2, 4])
