"""Generated STEM problems in the Stage-1 schema, with answers that can be checked exactly.

Each row has the three columns of the Stage-1 datasets (`question`, `CoT`,
`response`) plus `domain` and `answer` (the final value alone, in a form
math-verify parses: an integer, a fraction `p/q`, or an expression). The
derivations are short but real: every step is arithmetic that the code did,
so a model that learns them learns to compute, not to copy a string.

Generation is deterministic in `seed`. A question's split is decided by a
checksum of its text (one in ten goes to `heldout`), so the two splits never
share a question, whatever their sizes and seeds.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

SPLITS = ("train", "heldout")
HELDOUT_ONE_IN = 10


def fmt(value: Fraction | int) -> str:
    """An exact number as text: `12`, `-3`, `7/3`."""
    value = Fraction(value)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _row(domain: str, question: str, steps: list[str], response: str, answer: str) -> dict:
    return {"question": question, "CoT": "\n".join(steps), "response": response, "domain": domain, "answer": answer}


def kinematics_distance(rng: random.Random) -> dict:
    a, t = rng.randint(1, 12), rng.randint(2, 15)
    s = Fraction(a * t * t, 2)
    return _row(
        "physics",
        f"A cart starts from rest and accelerates uniformly at {a} m/s^2. How far does it travel in {t} s?",
        [
            "The cart starts from rest, so its initial velocity is u = 0 m/s.",
            "For uniform acceleration the distance is s = u t + (1/2) a t^2.",
            f"With u = 0, a = {a} m/s^2 and t = {t} s: s = (1/2)({a})({t}^2) = (1/2)({a})({t * t}) = {fmt(s)} m.",
        ],
        f"{fmt(s)} m",
        fmt(s),
    )


def projectile_height(rng: random.Random) -> dict:
    v, g = rng.randint(5, 40), 10
    h = Fraction(v * v, 2 * g)
    return _row(
        "classical mechanics",
        f"A ball is thrown straight up at {v} m/s. Taking g = {g} m/s^2 and ignoring air resistance, how high does it rise?",
        [
            "At the highest point the vertical velocity is zero.",
            "Energy conservation gives (1/2) m v^2 = m g h, so h = v^2 / (2 g).",
            f"h = {v}^2 / (2 * {g}) = {v * v} / {2 * g} = {fmt(h)} m.",
        ],
        f"{fmt(h)} m",
        fmt(h),
    )


def ohms_law_power(rng: random.Random) -> dict:
    r, i = rng.randint(2, 50), rng.randint(1, 9)
    v = r * i
    return _row(
        "electromagnetism",
        f"A current of {i} A flows through a {r} ohm resistor. How much power does the resistor dissipate?",
        [
            f"Ohm's law gives the voltage across the resistor: V = I R = {i} * {r} = {v} V.",
            "The dissipated power is P = V I.",
            f"P = {v} * {i} = {v * i} W.",
        ],
        f"{v * i} W",
        str(v * i),
    )


def kinetic_energy(rng: random.Random) -> dict:
    m, v = rng.randint(1, 20), rng.randint(1, 25)
    e = Fraction(m * v * v, 2)
    return _row(
        "physics",
        f"What is the kinetic energy of a {m} kg body moving at {v} m/s?",
        [
            "Kinetic energy is E = (1/2) m v^2.",
            f"E = (1/2)({m})({v}^2) = (1/2)({m})({v * v}) = {fmt(e)} J.",
        ],
        f"{fmt(e)} J",
        fmt(e),
    )


def determinant(rng: random.Random) -> dict:
    a, b, c, d = (rng.randint(-9, 9) for _ in range(4))
    det = a * d - b * c
    return _row(
        "linear algebra",
        f"Compute the determinant of the matrix [[{a}, {b}], [{c}, {d}]].",
        [
            "For a 2x2 matrix [[a, b], [c, d]] the determinant is a d - b c.",
            f"a d = ({a})({d}) = {a * d} and b c = ({b})({c}) = {b * c}.",
            f"det = {a * d} - ({b * c}) = {det}.",
        ],
        str(det),
        str(det),
    )


def symmetric_eigenvalues(rng: random.Random) -> dict:
    p, q = rng.randint(-6, 9), rng.randint(1, 7)
    lo, hi = p - q, p + q
    return _row(
        "linear algebra",
        f"Find the eigenvalues of the matrix [[{p}, {q}], [{q}, {p}]].",
        [
            f"The characteristic equation is det(A - lambda I) = ({p} - lambda)^2 - {q}^2 = 0.",
            f"So {p} - lambda = {q} or {p} - lambda = -{q}.",
            f"lambda = {p} - {q} = {lo} or lambda = {p} + {q} = {hi}.",
        ],
        f"lambda = {lo}, {hi}",
        f"{lo}, {hi}",
    )


def second_order_ode(rng: random.Random) -> dict:
    r1, r2 = rng.sample([-5, -4, -3, -2, -1, 1, 2, 3, 4, 5], 2)
    r1, r2 = min(r1, r2), max(r1, r2)
    s, p = r1 + r2, r1 * r2

    def term(coefficient: int, symbol: str) -> str:
        if coefficient == 0:
            return ""
        sign = "-" if coefficient < 0 else "+"
        magnitude = "" if abs(coefficient) == 1 else str(abs(coefficient))
        return f" {sign} {magnitude}{symbol}"

    equation = f"y''{term(-s, 'y' + chr(39))}{term(p, 'y')} = 0"
    solution = f"y = C_1 e^{{{r1}x}} + C_2 e^{{{r2}x}}"
    return _row(
        "differential equations",
        f"Find the general solution of the differential equation {equation}.",
        [
            "Try y = e^{r x}; substituting gives the characteristic equation.",
            f"r^2{term(-s, 'r')}{term(p, '')} = 0, which factors as (r - ({r1}))(r - ({r2})) = 0.",
            f"The roots r = {r1} and r = {r2} are real and distinct.",
            "So the general solution is a combination of the two exponentials.",
        ],
        solution,
        solution,
    )


def exponential_ivp(rng: random.Random) -> dict:
    k, y0 = rng.choice([-4, -3, -2, 2, 3, 4]), rng.randint(1, 9)
    solution = f"y = {y0} e^{{{k}x}}"
    return _row(
        "differential equations",
        f"Solve the initial value problem y' = {k}y with y(0) = {y0}.",
        [
            f"Separate variables: dy / y = {k} dx.",
            f"Integrate: ln|y| = {k}x + C, so y = A e^{{{k}x}}.",
            f"The initial condition gives y(0) = A = {y0}.",
        ],
        solution,
        solution,
    )


def derivative_at_point(rng: random.Random) -> dict:
    a, b, c = rng.randint(1, 5), rng.randint(-6, 6), rng.randint(-9, 9)
    x0 = rng.randint(-4, 4)
    value = 3 * a * x0 * x0 + 2 * b * x0 + c
    return _row(
        "mathematics",
        f"Let f(x) = {a}x^3 + ({b})x^2 + ({c})x + 7. Compute f'({x0}).",
        [
            "Differentiate term by term with the power rule.",
            f"f'(x) = {3 * a}x^2 + ({2 * b})x + ({c}).",
            f"f'({x0}) = {3 * a}({x0 * x0}) + ({2 * b})({x0}) + ({c}) = {3 * a * x0 * x0} + ({2 * b * x0}) + ({c}) = {value}.",
        ],
        str(value),
        str(value),
    )


def definite_integral(rng: random.Random) -> dict:
    a, c, upper = rng.randint(1, 9), rng.randint(-5, 9), rng.randint(1, 6)
    value = Fraction(a * upper**3, 3) + c * upper
    return _row(
        "advanced calculus",
        f"Evaluate the integral of ({a}x^2 + ({c})) dx from x = 0 to x = {upper}.",
        [
            f"An antiderivative is F(x) = ({a}/3)x^3 + ({c})x.",
            f"F({upper}) = ({a}/3)({upper**3}) + ({c})({upper}) = {fmt(Fraction(a * upper**3, 3))} + ({c * upper}) = {fmt(value)}.",
            "F(0) = 0, so the integral equals F(" + str(upper) + ") - F(0).",
        ],
        fmt(value),
        fmt(value),
    )


def linear_equation(rng: random.Random) -> dict:
    a = rng.choice([n for n in range(-9, 10) if n not in (0, 1)])
    b, c = rng.randint(-20, 20), rng.randint(-20, 20)
    x = Fraction(c - b, a)
    return _row(
        "mathematics",
        f"Solve {a}x + ({b}) = {c} for x.",
        [
            f"Subtract {b} from both sides: {a}x = {c} - ({b}) = {c - b}.",
            f"Divide both sides by {a}: x = {c - b} / {a} = {fmt(x)}.",
        ],
        f"x = {fmt(x)}",
        fmt(x),
    )


GENERATORS: tuple[Callable[[random.Random], dict], ...] = (
    kinematics_distance,
    projectile_height,
    ohms_law_power,
    kinetic_energy,
    determinant,
    symmetric_eigenvalues,
    second_order_ode,
    exponential_ivp,
    derivative_at_point,
    definite_integral,
    linear_equation,
)


def split_of(question: str) -> str:
    """The split a question belongs to, fixed by a checksum of its text."""
    return "heldout" if zlib.crc32(question.encode("utf-8")) % HELDOUT_ONE_IN == 0 else "train"


def generate(split: str = "train", n: int = 256, seed: int = 0) -> list[dict]:
    """`n` distinct problems of `split` ("train" or "heldout")."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, not {split!r}")
    rng = random.Random(seed)
    rows: list[dict] = []
    seen: set[str] = set()
    for _ in range(1000 * max(n, 1)):
        if len(rows) == n:
            return rows
        row = rng.choice(GENERATORS)(rng)
        if row["question"] not in seen and split_of(row["question"]) == split:
            seen.add(row["question"])
            rows.append(row)
    raise ValueError(f"could not draw {n} distinct {split} problems; ask for fewer")


def write_jsonl(path: str | Path, *, split: str = "train", n: int = 256, seed: int = 0) -> Path:
    path = Path(path)
    with path.open("w", encoding="utf-8") as handle:
        for row in generate(split, n, seed):
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
