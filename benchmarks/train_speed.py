"""Agent steps/s of the whole `make train` loop (evaluations included), variants side by side.

Each variant is the `make train` command (its CPU budget, cartpole-swingup, seed 1) with a few
keys changed, run as a real `ldmpc train` process for TS_STEPS agent steps. Its rate is taken
over the steady learning phase only, from the run's own train.csv: from the first episode that
ends after the seed phase and its one-off catch-up of `seed_steps` updates (1% of a 100k run, a
quarter of a short one) to the last episode, so neither Ray's start-up, the cheap random seed
phase nor the catch-up burst flatters or hides anything; an evaluation every `eval_freq`
(2,500) steps falls inside it, as in a real run. Variants run in alternation, TS_REPEATS
times; medians and each variant's ratio to the first are printed (docs/design.md §3.4: these
VMs are noisy, absolute rates mean little). 100k agent steps at a rate r take
100000 / r / 60 minutes.

Knobs: TS_VARIANTS=name[,name] (from VARIANTS; default before,default: the speed work's
ratio), TS_STEPS (default 6000; QUICK=1: 3500),
TS_REPEATS (default 2; QUICK=1: 1).
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import append_rows, env_int, env_list, quick, run_as_script, table

# The Makefile's `make train` budget (TRAIN_ARGS) without `steps`.
MAKE_TRAIN = [
    "task=cartpole-swingup",
    "model_size=1",
    "batch_size=64",
    "iterations=2",
    "num_samples=128",
    "num_elites=16",
    "num_pi_trajs=8",
    "seed_steps=1000",
    "eval_freq=2500",
    "eval_episodes=4",
    "checkpoint_freq=2500",
    "compile=true",
    "precision=auto",
]
SEED_STEPS = 1000
VARIANTS: dict[str, list[str]] = {
    # `make train` before the speed work: fp32, eager, training waits for every evaluation
    "before": ["compile=false", "precision=fp32"],
    "default": [],  # what `make train` runs now: compiled, bf16 where the CPU has it
    "eval_parallel": ["eval_parallel=true"],  # evaluation in an actor beside training
    "threads1": ["torch_threads=1"],  # one process, one torch thread: one core idles
    # acting on a remote runner while the driver learns: one core each
    "async": ["torch_threads=1", "num_env_runners=1", "async_learning=true"],
    # the learner spent 16 % of its time handing weights over after every update (py-spy)
    "async_sync4": ["torch_threads=1", "num_env_runners=1", "async_learning=true", "sync_every=4"],
    # updates on a second thread while the driver plans the next step (one core each)
    "overlap": ["overlap=true"],
    # ... with evaluation in a niced actor, on the cycles the planning thread leaves idle
    "overlap_eval_parallel": ["overlap=true", "eval_parallel=true"],
    "async_eval_parallel": [
        "torch_threads=1",
        "num_env_runners=1",
        "async_learning=true",
        "eval_parallel=true",
    ],
}


def learning_rate(train_csv: Path) -> float:
    """Agent steps/s from the first episode ending after the seed phase to the last one."""
    with open(train_csv) as f:
        rows = [(int(r["step"]), float(r["elapsed_s"])) for r in csv.DictReader(f)]
    start = next((s, t) for s, t in rows if s > SEED_STEPS)
    end = rows[-1]
    if end[0] <= start[0]:
        raise RuntimeError(f"{train_csv}: no episode finished after the seed phase")
    return (end[0] - start[0]) / (end[1] - start[1])


def run_variant(name: str, steps: int, work: Path) -> float:
    """One `ldmpc train` process; its learning-phase steps/s."""
    args = [*MAKE_TRAIN, f"steps={steps}", *VARIANTS[name]]
    exp = f"{name}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "ldmpc.cli", "train", *args]
    cmd += [f"work_dir={work}", f"exp_name={exp}", "progress=false"]
    log = work / f"{exp}.log"
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"variant {name} exited {proc.returncode}; see {log}")
    return learning_rate(work / "cartpole-swingup" / "1" / exp / "train.csv")


def main() -> None:
    names = env_list("TS_VARIANTS", "before,default")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        from ldmpc.errors import UserError

        raise UserError(f"TS_VARIANTS: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    steps = env_int("TS_STEPS", 3500 if quick() else 6000)
    repeats = env_int("TS_REPEATS", 1 if quick() else 2)
    rates: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="train_speed_") as tmp:
        for _ in range(repeats):  # alternated: a slow spell of the VM hits every variant
            for name in names:
                rates[name].append(run_variant(name, steps, Path(tmp)))
                print(f"{name}: {rates[name][-1]:.2f} steps/s", flush=True)
    base = statistics.median(rates[names[0]])
    rows: list[dict[str, Any]] = []
    for name in names:
        rate = statistics.median(rates[name])
        rows.append(
            {
                "variant": name,
                "args": " ".join(VARIANTS[name]) or "(make train)",
                "steps_per_s": rate,
                "vs_" + names[0]: rate / base,
                "min_per_100k": 100_000 / rate / 60,
                "runs": len(rates[name]),
                "cpus": len(os.sched_getaffinity(0)),
            }
        )
    print(table(rows))
    print(f"rows appended to {append_rows('train_speed', rows)}")


if __name__ == "__main__":
    run_as_script(main)
