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

"pinned" is `make train` as it was before the speed work: the code of commit TS_PINNED
(default ef95b4d, the last commit before it), unpacked with `git archive` into a temporary
folder and run with this venv and that commit's budget. "before" is today's code with the
speed switches off (fp32, eager); it has kept the eager speed-ups made since.

Knobs: TS_VARIANTS=name[,name] (from VARIANTS or "pinned"; default pinned,before,default:
the speed work's ratios), TS_PINNED, TS_STEPS (default 6000; QUICK=1: 3500), TS_REPEATS
(default 2; QUICK=1: 1).
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
    "overlap=true",
    "eval_parallel=true",
]
SEED_STEPS = 1000
# `make train` before the speed work (ef95b4d: "One house" done, nothing of it begun): the same
# budget without the keys that commit did not have yet
PINNED = "ef95b4d"
PINNED_ARGS = [
    a
    for a in MAKE_TRAIN
    if not a.startswith(("compile=", "precision=", "overlap=", "eval_parallel="))
]
SYNC = ["overlap=false", "eval_parallel=false"]  # one thread of work at a time, eval inline
VARIANTS: dict[str, list[str]] = {
    # today's code with the speed switches off: fp32, eager, training waits for every evaluation
    "before": ["compile=false", "precision=fp32", *SYNC],
    "default": [],  # what `make train` runs now (compiled, bf16 where it pays, overlap)
    # make train until session 18: compiled + bf16, updates and planning in turn, eval inline
    "sync": SYNC,
    "eval_parallel": ["overlap=false"],  # evaluation in an actor beside a sync loop
    "threads1": [*SYNC, "torch_threads=1"],  # one process, one torch thread: one core idles
    # acting on a remote runner while the driver learns: one core each
    "async": [*SYNC, "torch_threads=1", "num_env_runners=1", "async_learning=true"],
    # the learner spent 16 % of its time handing weights over after every update (py-spy)
    "async_sync4": [
        *SYNC,
        "torch_threads=1",
        "num_env_runners=1",
        "async_learning=true",
        "sync_every=4",
    ],
    "overlap": ["eval_parallel=false"],  # updates on a second thread, evaluation inline
    "async_eval_parallel": [
        "overlap=false",
        "torch_threads=1",
        "num_env_runners=1",
        "async_learning=true",
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


def unpack(commit: str, dest: Path) -> Path:
    """The tree of `commit` of this repository, unpacked into `dest` (no git state there)."""
    from ldmpc.errors import UserError

    repo = Path(__file__).resolve().parent.parent
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", commit], capture_output=True, check=False
    )
    if archive.returncode != 0:
        reason = archive.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise UserError(f"TS_PINNED={commit}: git archive failed ({' '.join(reason)})")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def run_variant(name: str, steps: int, work: Path, pinned_src: Path | None = None) -> float:
    """One `ldmpc train` process; its learning-phase steps/s. "pinned" runs the code in
    `pinned_src` (PYTHONPATH first, so its `ldmpc` wins over this checkout's)."""
    env = dict(os.environ)
    if name == "pinned":
        assert pinned_src is not None
        args = [*PINNED_ARGS, f"steps={steps}"]
        env["PYTHONPATH"] = os.pathsep.join([str(pinned_src), env.get("PYTHONPATH", "")])
    else:
        args = [*MAKE_TRAIN, f"steps={steps}", *VARIANTS[name]]
    exp = f"{name}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "ldmpc.cli", "train", *args]
    cmd += [f"work_dir={work}", f"exp_name={exp}", "progress=false"]
    log = work / f"{exp}.log"
    with open(log, "w") as out:
        proc = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, check=False, env=env,
            cwd=pinned_src if name == "pinned" else None,
        )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"variant {name} exited {proc.returncode}; see {log}")
    return learning_rate(work / "cartpole-swingup" / "1" / exp / "train.csv")


def main() -> None:
    names = env_list("TS_VARIANTS", "pinned,before,default")
    unknown = [n for n in names if n not in VARIANTS and n != "pinned"]
    if unknown:
        from ldmpc.errors import UserError

        known = ", ".join(["pinned", *VARIANTS])
        raise UserError(f"TS_VARIANTS: unknown {', '.join(unknown)} (known: {known})")
    steps = env_int("TS_STEPS", 3500 if quick() else 6000)
    repeats = env_int("TS_REPEATS", 1 if quick() else 2)
    rates: dict[str, list[float]] = {n: [] for n in names}
    pinned = os.environ.get("TS_PINNED", PINNED)
    with tempfile.TemporaryDirectory(prefix="train_speed_") as tmp:
        src = unpack(pinned, Path(tmp) / "pinned-src") if "pinned" in names else None
        for _ in range(repeats):  # alternated: a slow spell of the VM hits every variant
            for name in names:
                rates[name].append(run_variant(name, steps, Path(tmp), src))
                print(f"{name}: {rates[name][-1]:.2f} steps/s", flush=True)
    base = statistics.median(rates[names[0]])
    rows: list[dict[str, Any]] = []
    for name in names:
        rate = statistics.median(rates[name])
        rows.append(
            {
                "variant": name,
                "args": f"commit {pinned}"
                if name == "pinned"
                else " ".join(VARIANTS[name]) or "(make train)",
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
