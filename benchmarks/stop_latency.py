"""Seconds from SIGTERM to the exit of `ldmpc train`, in each phase of a run (issue: answer a
stop within seconds; the target is <= 5 s everywhere).

Each phase is one real `ldmpc train` process at the `make train` budget (cartpole-swingup),
signalled once its phase is under way, as told by the run's own files or its output:
- `seed`: the random seed phase (right after the step-0 evaluation's row in eval.csv; the
  first train.csv row comes too late: one 0.5 s training step of random actions reaches the
  seed phase's end and starts the catch-up updates, whose first call compiles the update:
  that is the `compile` phase);
- `learn`: learning (train.csv past the seed phase's catch-up, step 1,500);
- `eval`: the step-0 evaluation in the driver (announced by the test hook
  LDMPC_TEST_EVAL_STEP_S, here 0.001 s per step, i.e. a real evaluation);
- `compile`: the update's first compilation, at the seed phase's end (announced by the test
  hook LDMPC_TEST_ANNOUNCE; a stop abandons it);
- `startup`: the set-up right after the local Ray started (announced by the same hook; the
  run ends before training, with nothing to save, so no checkpoint is expected).
The time includes the final checkpoint, Ray's shutdown and the interpreter's exit. Each
phase's exit code must be 0 and its checkpoint loadable; a failure raises.

Knobs: SL_PHASES (seed,learn,eval,compile,startup), SL_ARGS (extra key=value, e.g. TD-MPC2's
defaults: "batch_size=256 num_samples=512 iterations=6 num_elites=64 num_pi_trajs=24").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import append_rows, env_list, run_as_script, table
from benchmarks.train_speed import MAKE_TRAIN
from ldmpc.checkpoint import TEST_ANNOUNCE_ENV
from ldmpc.evaluate import TEST_STEP_DELAY_ENV

STEP_HOOK = TEST_STEP_DELAY_ENV  # announces the evaluation (and slows each step by its value)
ANNOUNCED = {  # phases a run announces on stdout: the line that says it has begun
    "eval": STEP_HOOK,
    "compile": f"{TEST_ANNOUNCE_ENV}: compiling update",
    "startup": f"{TEST_ANNOUNCE_ENV}: Ray is up",
}


def _rows(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def _started(phase: str, proc: subprocess.Popen[str], run_dir: Path) -> None:
    """Return once `phase` is under way (raises when the run ends first or takes > 15 min)."""
    deadline = time.time() + 900
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{phase}: the run ended before the phase ({proc.returncode})")
        if time.time() > deadline:
            raise RuntimeError(f"{phase}: not reached in 15 minutes")
        if phase in ANNOUNCED:
            if ANNOUNCED[phase] in proc.stdout.readline():
                return
            continue
        if phase == "seed" and _rows(run_dir / "eval.csv") >= 1:
            return
        if phase == "learn" and _rows(run_dir / "train.csv") >= 3:
            return
        time.sleep(0.2)


def measure(phase: str, work: Path, extra: list[str]) -> float:
    """One run signalled in `phase`: seconds from SIGTERM to its exit."""
    from ldmpc.checkpoint import load_checkpoint

    run = work / phase
    args = [*MAKE_TRAIN, "steps=1000000", f"work_dir={run}", "progress=false", *extra]
    if phase == "eval":  # the evaluation in the driver, where the hook announces it
        args.append("eval_parallel=false")
    hook = {STEP_HOOK: "0.001"} if phase == "eval" else {TEST_ANNOUNCE_ENV: "1"}
    env = {**os.environ, **(hook if phase in ANNOUNCED else {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ldmpc.cli", "train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _started(phase, proc, run / "cartpole-swingup" / "1" / "default")
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    seconds = time.perf_counter() - sent
    if proc.returncode != 0:
        raise RuntimeError(f"{phase}: exit {proc.returncode}: {out[-800:]}")
    if phase != "startup":
        load_checkpoint(run / "cartpole-swingup" / "1" / "default" / "checkpoints" / "latest.pt")
    return seconds


def main() -> None:
    phases = env_list("SL_PHASES", "seed,learn,eval,compile,startup")
    extra = os.environ.get("SL_ARGS", "").split()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="stop_latency_") as tmp:
        for phase in phases:
            seconds = measure(phase, Path(tmp), extra)
            rows.append({"phase": phase, "seconds_to_exit": seconds, "args": " ".join(extra)})
            print(f"{phase}: {seconds:.2f} s", flush=True)
    print(table(rows))
    print(f"rows appended to {append_rows('stop_latency', rows)}")


if __name__ == "__main__":
    run_as_script(main)
