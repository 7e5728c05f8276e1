"""The competition generator: deterministic, varied, and every answer right by brute force from the problem text."""

from __future__ import annotations

import re
from collections import Counter
from itertools import combinations

import pytest

from proofkd.evals import competition


def numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def power_by_multiplication(base: int, exponent: int) -> int:
    value = 1
    for _ in range(exponent):
        value *= base
    return value


def remainder_of_power(text: str) -> int:
    base, exponent, modulus = numbers(text)
    remainder = 1
    for _ in range(exponent):
        remainder = remainder * base % modulus
    return remainder


def divisor_count(text: str) -> int:
    (n,) = numbers(text)
    return sum(1 for d in range(1, n + 1) if n % d == 0)


def committee_count(text: str) -> int:
    men, women, size, exactly = numbers(text)
    people = range(men + women)  # women are the last `women` people
    return sum(1 for chosen in combinations(people, size) if sum(p >= men for p in chosen) == exactly)


def digit_sum_of_power(text: str) -> int:
    base, exponent = numbers(text)
    value, total = power_by_multiplication(base, exponent), 0
    while value:
        value, digit = divmod(value, 10)
        total += digit
    return total


def blinking_lights(text: str) -> int:
    stated = numbers(text)
    periods, horizon = stated[:3], max(stated)
    return sum(1 for t in range(horizon + 1) if all(t % p == 0 for p in periods))


def square_tiling(text: str) -> int:
    width, length = numbers(text)
    sides = [s for s in range(1, min(width, length) + 1) if width % s == 0 and length % s == 0]
    return min(width * length // (s * s) for s in sides)


def residue_class_sum(text: str) -> int:
    bound, remainder, divisor = numbers(text)
    return sum(k for k in range(1, bound) if k % divisor == remainder)


def lattice_points_in_disc(text: str) -> int:
    radius_squared = numbers(text)[-1]
    reach = range(-radius_squared, radius_squared + 1)
    return sum(1 for x in reach for y in reach if x * x + y * y <= radius_squared)


def factorial_trailing_zeros(text: str) -> int:
    n = numbers(text)[0]
    value, zeros = 1, 0
    for k in range(2, n + 1):
        value *= k
    while value % 10 == 0:
        value //= 10
        zeros += 1
    return zeros


def inclusion_exclusion(text: str) -> int:
    _, bound, first, second = numbers(text)
    return sum(1 for k in range(1, bound + 1) if k % first == 0 or k % second == 0)


BRUTE_FORCE = {
    "remainder_of_power": remainder_of_power,
    "divisor_count": divisor_count,
    "committee_count": committee_count,
    "digit_sum_of_power": digit_sum_of_power,
    "blinking_lights": blinking_lights,
    "square_tiling": square_tiling,
    "residue_class_sum": residue_class_sum,
    "lattice_points_in_disc": lattice_points_in_disc,
    "factorial_trailing_zeros": factorial_trailing_zeros,
    "inclusion_exclusion": inclusion_exclusion,
}


def test_every_family_has_a_brute_force_check():
    assert {f.__name__ for f in competition.FAMILIES} == set(BRUTE_FORCE)


def test_the_default_set_is_fixed_and_mixes_the_families():
    problems = competition.generate()
    assert problems == competition.generate()
    assert len(problems) == competition.DEFAULT_COUNT == 40
    assert len({p.problem for p in problems}) == 40
    assert Counter(p.kind for p in problems) == {kind: 4 for kind in BRUTE_FORCE}
    # Any prefix (what `--limit` evaluates) already mixes families.
    assert len({p.kind for p in problems[:10]}) == 10


def test_the_default_answers_are_right_by_brute_force():
    for problem in competition.generate():
        assert BRUTE_FORCE[problem.kind](problem.problem) == problem.answer, problem


def test_answers_are_right_by_brute_force_for_any_seed(seed):
    problems = competition.generate(30, seed=seed)
    assert competition.generate(30, seed=seed) == problems
    for problem in problems:
        assert BRUTE_FORCE[problem.kind](problem.problem) == problem.answer, problem


def test_answers_are_integers_and_not_degenerate(seed):
    for problem in competition.generate(60, seed=seed):
        assert isinstance(problem.answer, int)
        if problem.kind in ("blinking_lights", "square_tiling"):
            assert problem.answer >= 2, problem  # the lights meet again; the floor needs several tiles
        else:
            assert problem.answer >= 0, problem


def test_a_generator_that_repeats_itself_fails_clearly(monkeypatch):
    monkeypatch.setattr(competition, "FAMILIES", (lambda rng: competition.Problem("same", "What is 1 + 1?", 2),))
    with pytest.raises(ValueError, match="distinct"):
        competition.generate(2, seed=0)
