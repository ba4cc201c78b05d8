"""Does compile + bf16 learn what fp32 learns, online? Paired runs at the `make train` budget.

For each task and seed, two `ldmpc train` runs to PA_STEPS (30k) agent steps: the reference
(`precision=fp32 compile=false`) and the fast settings (`precision=bf16 compile=true`), same
seed, same env seeds and eval episodes. A run's score is its mean eval return from PA_FROM
(15k) on. The check: each task's fast mean lies within the spread (min..max) of its fp32
seeds. The harness resumes unfinished runs and skips finished ones (one run at a time: start
one harness per core, pinned with taskset, each with its own PA_VARIANTS), then prints the
table; PA_SUMMARY=1 only prints it.

Knobs: PA_ROOT (work_dir of the runs; default benchmarks/results/precision_ab), PA_TASKS
(cartpole-swingup,cup-catch), PA_SEEDS (1,2), PA_STEPS (30000), PA_FROM (15000),
PA_VARIANTS (fp32-eager,bf16-compile; also fp32-compile, bf16-compile-overlap), PA_SUMMARY.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, append_rows, env_int, env_list, run_as_script, table
from benchmarks.train_speed import MAKE_TRAIN, SYNC

VARIANTS = {  # the runs are sync (one thread of work, evaluation inline) unless said
    "fp32-eager": ["precision=fp32", "compile=false", *SYNC],
    "bf16-compile": ["precision=bf16", "compile=true", *SYNC],
    # compiled in fp32: separates the compiler's changes from bf16's
    "fp32-compile": ["precision=fp32", "compile=true", *SYNC],
    # make train's settings: the updates on a second thread (the learning does not depend on
    # the cores given: rounds are reproducible, so one core per run will do)
    "bf16-compile-overlap": [
        "precision=bf16",
        "compile=true",
        "overlap=true",
        "eval_parallel=false",
    ],
}
REFERENCE = "fp32-eager"


def run_dir(root: Path, task: str, seed: int, variant: str) -> Path:
    return root / task / str(seed) / variant


def evals(path: Path) -> dict[int, float]:
    """step -> eval return of a run so far ({} before its first evaluation)."""
    if not (path / "eval.csv").exists():
        return {}
    with open(path / "eval.csv", newline="") as fh:
        return {int(float(r["step"])): float(r["episode_reward"]) for r in csv.DictReader(fh)}


def run(root: Path, task: str, seed: int, variant: str, steps: int) -> None:
    """Train (or resume) one run to `steps`; nothing to do when it got there."""
    path = run_dir(root, task, seed, variant)
    if steps in evals(path):
        return
    resume = (path / "checkpoints" / "latest.pt").exists()
    budget = [a for a in MAKE_TRAIN if not a.startswith("task=")]
    args = [f"task={task}", *budget, f"steps={steps}", f"seed={seed}"]
    args += [f"work_dir={root}", f"exp_name={variant}", "torch_threads=1", "progress=false"]
    args += [*VARIANTS[variant], f"resume={str(resume).lower()}"]
    print(f"{task} seed {seed} {variant}: {'resume' if resume else 'start'}", flush=True)
    subprocess.run([sys.executable, "-m", "ldmpc.cli", "train", *args], check=True)


def score(path: Path, start: int, steps: int) -> float:
    """Mean eval return over [start, steps] (nan until the run has its last evaluation)."""
    found = evals(path)
    if steps not in found:
        return float("nan")
    return float(np.mean([v for s, v in found.items() if start <= s <= steps]))


def summary_rows(root: Path, tasks: list[str], seeds: list[int], start: int, steps: int) -> list:
    rows: list[dict[str, Any]] = []
    for task in tasks:
        ran = [  # the reference and every other variant with a run of this task on disk
            v
            for v in VARIANTS
            if v == REFERENCE or any(run_dir(root, task, s, v).exists() for s in seeds)
        ]
        scores = {v: [score(run_dir(root, task, s, v), start, steps) for s in seeds] for v in ran}
        ref = [x for x in scores[REFERENCE] if np.isfinite(x)]
        for variant, values in scores.items():
            done = [x for x in values if np.isfinite(x)]
            mean = float(np.mean(done)) if done else float("nan")
            row: dict[str, Any] = {
                "task": task,
                "variant": variant,
                "per_seed": " ".join(f"{x:.1f}" for x in values),
                "mean": mean,
                "vs_fp32": mean / np.mean(ref) if ref and done else float("nan"),
            }
            if variant != REFERENCE:
                inside = len(ref) >= 2 and min(ref) <= mean <= max(ref)
                above = bool(ref) and mean > max(ref)
                row["within_fp32_spread"] = (
                    "yes" if inside else "above" if above else "no" if ref and done else "-"
                )
            rows.append(row)
    return rows


def main() -> None:
    root = Path(os.environ.get("PA_ROOT", RESULTS / "precision_ab"))
    tasks = env_list("PA_TASKS", "cartpole-swingup,cup-catch")
    seeds = [int(s) for s in env_list("PA_SEEDS", "1,2")]
    steps, start = env_int("PA_STEPS", 30_000), env_int("PA_FROM", 15_000)
    variants = env_list("PA_VARIANTS", "fp32-eager,bf16-compile")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        from ldmpc.errors import UserError

        raise UserError(f"PA_VARIANTS: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    if os.environ.get("PA_SUMMARY", "") in ("", "0"):
        for variant in variants:
            for task in tasks:
                for seed in seeds:
                    run(root, task, seed, variant, steps)
    rows = summary_rows(root, tasks, seeds, start, steps)
    print(f"mean eval return over steps {start:,}-{steps:,} (seeds {seeds}); runs in {root}")
    print(table(rows))
    append_rows("precision_ab", rows)


if __name__ == "__main__":
    run_as_script(main)
