"""Arithmetic word problems in DAPO-Math-17k's row schema, with integer answers.

For the on-policy distillation CPU twin and the offline tests: each row is
`{data_source, prompt: [{role: user, content}], ability, reward_model:
{ground_truth, style}, extra_info: {index}}`, the prompt in DAPO's template, so
the same builder, reward and chat template serve the real data and these.
Deterministic in `seed`; `split` draws disjoint problems like `proofkd.core.data.stem`.
"""

from __future__ import annotations

import random
import zlib

from proofkd.core.templates import render_dapo_prompt

SPLITS = ("train", "heldout")


def _problem(rng: random.Random) -> tuple[str, int]:
    kind = rng.randrange(4)
    a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 9)
    if kind == 0:
        return f"What is {a} + {b} * {c}?", a + b * c
    if kind == 1:
        return f"A box holds {a} apples. How many apples are in {c} such boxes?", a * c
    if kind == 2:
        return f"Tom has {a + b} marbles and gives away {b}. How many marbles does he have left?", a
    return f"What is ({a} + {b}) * {c}?", (a + b) * c


def split_of(problem: str) -> str:
    return "heldout" if zlib.crc32(problem.encode("utf-8")) % 10 == 0 else "train"


def generate(split: str = "train", n: int = 64, seed: int = 0) -> list[dict]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, not {split!r}")
    rng = random.Random(seed)
    rows, seen = [], set()
    for _ in range(1000 * max(n, 1)):
        if len(rows) == n:
            return rows
        problem, answer = _problem(rng)
        if problem in seen or split_of(problem) != split:
            continue
        seen.add(problem)
        rows.append(
            {
                "data_source": "proofkd-arith",
                "prompt": [{"role": "user", "content": render_dapo_prompt(problem)}],
                "ability": "MATH",
                "reward_model": {"ground_truth": str(answer), "style": "rule"},
                "extra_info": {"index": len(rows)},
            }
        )
    raise ValueError(f"could not draw {n} distinct {split} problems; ask for fewer")
