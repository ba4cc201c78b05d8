"""End-to-end learning: `ldmpc train` on cartpole-swingup for 2,500 agent steps at the
`make train` budget, two seeds side by side, must end clearly above a uniformly random policy
on the same eval seeds.

One seed is not a test: after ~1,500 updates the deterministic eval policy sometimes settles into
one poor behaviour (all 4 episodes within 2 points of each other), and which seed does so depends
on float rounding. Seed 1 scored 202 with one torch thread and 66 with two on the same machine;
with two threads the same code passed CI at one stop and gave 66 (here and in CI) at the next,
so the machines' arithmetic had changed in between.
So each run uses one torch thread (the same arithmetic whatever the core count; the two runs share
a 2-core box without oversubscribing it) and the bar is on the mean of two seeds, set so that one
such collapse alone does not fail the test but two agents that do not learn do.

Measured on the 2-core box, one thread per run, eval return at 2,500 steps: seeds 1-4: 202, 176,
230, 195; at step 0 (untrained): 82, 50, 84, 55; uniform random actions: 82, 60, 72, 48. The
two runs together take ~10 minutes, so `make bench` runs this check, not `make test`.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from ray_temp import ray_temp_env

from benchmarks.learning import make_train_budget
from ldmpc.envs import make_vector_env

STEPS = 2500
EPISODES = 4
SEEDS = (1, 2)


def random_policy_returns(task: str, seed: int) -> np.ndarray:
    """Returns of uniform random actions on the eval envs (same seeds as `ldmpc train`'s eval)."""
    from ldmpc.evaluate import EVAL_SEED_OFFSET

    envs = make_vector_env(task, EPISODES, seed + EVAL_SEED_OFFSET)
    envs.reset(seed=seed + EVAL_SEED_OFFSET)
    envs.action_space.seed(seed)
    returns, active = np.zeros(EPISODES), np.ones(EPISODES, bool)
    while active.any():
        _, reward, term, trunc, _ = envs.step(envs.action_space.sample())
        returns += np.where(active, reward, 0.0)
        active &= ~(term | trunc)
    envs.close()
    return returns


def start_training(
    budget: list[str], seed: int, work_dir: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """One `ldmpc train` run in the background; its stderr goes to <work_dir>/stderr.log (a
    pipe nobody reads while the other run is awaited could fill and stall it)."""
    work_dir.mkdir(parents=True)
    args = [
        *budget, f"steps={STEPS}", f"eval_freq={STEPS}", f"eval_episodes={EPISODES}",
        f"seed={seed}", "torch_threads=1", "checkpoint_freq=0", "progress=false",
        f"work_dir={work_dir}",
    ]  # fmt: skip
    with (work_dir / "stderr.log").open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "ldmpc.cli", "train", *args],
            stdout=subprocess.DEVNULL, stderr=stderr, env=env,
        )  # fmt: skip


def final_eval_return(work_dir: Path) -> float:
    (eval_csv,) = work_dir.rglob("eval.csv")
    rows = list(csv.DictReader(eval_csv.open()))
    assert [int(r["step"]) for r in rows] == [0, STEPS]
    return float(rows[-1]["episode_reward"])


@pytest.mark.slow  # ~10 min of both cores: `make bench` runs it (docs/design.md §5)
def test_short_training_beats_random_clearly(tmp_path: Path) -> None:
    budget = [a for a in make_train_budget() if not a.startswith(("eval_", "checkpoint_freq"))]
    task = next(a.split("=", 1)[1] for a in budget if a.startswith("task="))
    procs = []
    with ExitStack() as stack:
        try:
            for seed in SEEDS:
                env = {**os.environ, **stack.enter_context(ray_temp_env())}
                procs.append(start_training(budget, seed, tmp_path / f"seed{seed}", env))
            for proc in procs:
                proc.wait(timeout=1200)
        finally:
            for proc in procs:
                proc.kill()
    for seed, proc in zip(SEEDS, procs, strict=True):
        assert proc.returncode == 0, (tmp_path / f"seed{seed}" / "stderr.log").read_text()[-3000:]
    trained = np.array([final_eval_return(tmp_path / f"seed{seed}") for seed in SEEDS])
    random = np.array([random_policy_returns(task, seed).mean() for seed in SEEDS])
    # seeds 1-2: bar 111; learned 189 (202, 176); one collapsed to 66: 121; untrained: 66
    bar = max(1.5 * random.mean(), random.mean() + 40.0)
    assert trained.mean() > bar, (trained, random)
