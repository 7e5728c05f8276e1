"""The generated STEM set: deterministic, disjoint splits, and answers that are the computed values."""

from __future__ import annotations

import json
import random
from fractions import Fraction

import pytest

from proofkd.core.data import stem


def test_generation_is_deterministic_and_seeded():
    assert stem.generate("train", 30, seed=4) == stem.generate("train", 30, seed=4)
    assert stem.generate("train", 30, seed=4) != stem.generate("train", 30, seed=5)


@pytest.mark.parametrize("sizes", [(50, 50), (400, 20), (20, 200)])
def test_train_and_heldout_never_share_a_question(sizes):
    train = {r["question"] for r in stem.generate("train", sizes[0], seed=1)}
    heldout = {r["question"] for r in stem.generate("heldout", sizes[1], seed=2)}
    assert not train & heldout
    assert all(stem.split_of(q) == "heldout" for q in heldout)


def test_rows_have_the_stage1_schema_and_distinct_questions():
    rows = stem.generate("train", 300, seed=0)
    assert len({r["question"] for r in rows}) == 300
    for row in rows:
        assert set(row) == {"question", "CoT", "response", "domain", "answer"}
        assert all(isinstance(row[k], str) and row[k] for k in ("question", "CoT", "response", "answer"))
        assert row["CoT"].count("\n") >= 1


def test_every_family_is_drawn():
    domains = {r["domain"] for r in stem.generate("train", 400, seed=0)}
    assert domains == {g(random.Random(0))["domain"] for g in stem.GENERATORS}


@pytest.mark.parametrize(
    "family, pattern, recompute",
    [
        (stem.kinematics_distance, r"at (\d+) m/s\^2.* in (\d+) s", lambda a, t: Fraction(a * t * t, 2)),
        (stem.kinetic_energy, r"a (\d+) kg body moving at (\d+) m/s", lambda m, v: Fraction(m * v * v, 2)),
        (stem.ohms_law_power, r"current of (\d+) A .* a (\d+) ohm", lambda i, r: Fraction(i * i * r)),
        (stem.projectile_height, r"up at (\d+) m/s\. Taking g = (\d+)", lambda v, g: Fraction(v * v, 2 * g)),
    ],
)
def test_physics_answers_are_the_physics(family, pattern, recompute):
    import re

    for seed in range(30):
        row = family(random.Random(seed))
        numbers = [int(n) for n in re.search(pattern, row["question"]).groups()]
        assert Fraction(row["answer"]) == recompute(*numbers), row


def test_linear_equation_answer_solves_the_equation():
    import re

    for seed in range(50):
        row = stem.linear_equation(random.Random(seed))
        a, b, c = (int(n) for n in re.findall(r"-?\d+", row["question"]))
        x = Fraction(row["answer"])
        assert a * x + b == c


def test_determinant_answer():
    import re

    for seed in range(50):
        row = stem.determinant(random.Random(seed))
        a, b, c, d = (int(n) for n in re.findall(r"-?\d+", row["question"]))
        assert int(row["answer"]) == a * d - b * c


def test_write_jsonl_round_trips(tmp_path):
    path = stem.write_jsonl(tmp_path / "x.jsonl", split="heldout", n=7, seed=3)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == stem.generate("heldout", 7, 3)


def test_bad_split_is_refused():
    with pytest.raises(ValueError, match="split"):
        stem.generate("validation", 3)
