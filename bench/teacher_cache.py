"""What a teacher cache costs on disk and saves per step: a recipe trained from its cache and with its live teacher.

    python bench/teacher_cache.py [--recipe quickstart/stage1_kd] [--steps 6] [--topk 20] [--work DIR]

Builds the cache with `proofkd teacher cache`, then runs `axolotl train` twice
for `--steps` steps with `proofkd_profile` (once reading the cache, once with
the teacher in process) and prints disk per token and per 1,000 rows of 1,024
tokens, and the seconds per step of each part, with the cached run's share of
the live run's. Both runs see the same rows in the same order; their losses
differ because the cached run's KL is over the top-k with a tail bucket and
the live one's over the whole vocabulary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from proofkd.core.recipes import read_recipe
from proofkd.core.run_log import read_run_log


def run(command: list[str], log: Path) -> float:
    started = time.monotonic()
    env = dict(os.environ, AXOLOTL_DO_NOT_TRACK="1")
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed; see {log}")
    return time.monotonic() - started


def part_seconds(output_dir: Path) -> dict[str, float]:
    """The median over steps (the first left out: it warms up) of each profiled part."""
    steps = [r for r in read_run_log(output_dir) if "proofkd/seconds/micro_step" in r][1:]
    names = [k for k in steps[0] if k.startswith("proofkd/seconds/")]
    return {name.split("/")[-1]: statistics.median(r[name] for r in steps) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="quickstart/stage1_kd")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--topk", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("outputs/bench-teacher-cache"))
    args = parser.parse_args()

    _, cfg = read_recipe(args.recipe)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    recipes = {}
    for name in ("cache", "live"):
        variant = dict(cfg, max_steps=args.steps, proofkd_profile=True, proofkd_teacher_topk=args.topk)
        variant.update(eval_steps=10**6, dataset_prepared_path=str(work / "prepared"), output_dir=str(work / name))
        if name == "cache":
            variant["proofkd_teacher_cache"] = str(cache)
        recipes[name] = work / f"{name}.yml"
        recipes[name].write_text(yaml.safe_dump(variant), encoding="utf-8")

    cli = [sys.executable, "-m", "proofkd.cli", "teacher", "cache", str(recipes["cache"]), "--overwrite"]
    build_seconds = run(cli, work / "build.log")
    manifest = json.loads((cache / "manifest.json").read_text())
    size = sum(shard["bytes"] for shard in manifest["shards"])
    from safetensors import safe_open

    positions = sum(
        int(safe_open(str(cache / shard["file"]), "pt").get_tensor("offsets")[-1]) for shard in manifest["shards"]
    )
    axolotl = [sys.executable, "-m", "axolotl.cli.main", "train"]
    for name in ("cache", "live"):
        run([*axolotl, str(recipes[name]), "--launcher", "python"], work / f"train-{name}.log")
    cached, live = part_seconds(work / "cache"), part_seconds(work / "live")

    per_position = size / positions
    print(
        f"recipe {args.recipe}: {manifest['rows']} rows, {positions} cached positions, top-{args.topk} "
        f"in {manifest['logprob_dtype']}; build {build_seconds:.0f} s (with loading)\n"
    )
    print("| disk | size |\n|---|---:|")
    print(f"| per cached position | {per_position:.1f} B |")
    print(f"| per 1,000 rows of 1,024 tokens | {per_position * 1023 * 1000 / 1e6:.1f} MB |\n")
    print("| part (median s per step) | cache | live teacher | cache / live |\n|---|---:|---:|---:|")
    for name in live:
        ratio = cached.get(name, float("nan")) / live[name] if live[name] else float("nan")
        print(f"| {name} | {cached.get(name, float('nan')):.3f} | {live[name]:.3f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
