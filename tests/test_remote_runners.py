"""Remote env runners (issue 6, part 1): `num_env_runners=2` Ray actors, each stepping a vector
env of 2 and planning for both envs in one call, train a short real run; a topology Ray cannot
place fails with one line instead of waiting forever."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from ray_temp import ray_temp_env

TINY = [
    "model_size=1", "batch_size=16", "num_samples=32", "iterations=1", "num_elites=4",
    "num_pi_trajs=4", "progress=false", "torch_threads=1", "checkpoint_freq=0",
]  # fmt: skip


def _train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    with ray_temp_env() as ray_env:
        return subprocess.run(
            [sys.executable, "-m", "ldmpc.cli", "train", *TINY, f"work_dir={tmp_path}", *args],
            capture_output=True, text=True, timeout=600, env={**os.environ, **ray_env},
            check=False,
        )  # fmt: skip


def test_two_remote_runners_of_two_envs_train(tmp_path: Path) -> None:
    # mw-reach: 100-step episodes, so 4 envs finish episodes within a few hundred steps
    proc = _train(
        tmp_path, "task=mw-reach", "num_env_runners=2", "num_cpus_per_env_runner=0.5",
        "num_envs=2", "seed_steps=400", "steps=800", "eval_freq=800", "eval_episodes=1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "DeprecationWarning" not in proc.stderr
    (train_csv,) = tmp_path.rglob("train.csv")
    rows = list(csv.DictReader(train_csv.open()))
    assert len(rows) >= 6  # 800 steps over 4 envs: 8 episodes, the last ones may still run
    assert {int(r["step"]) % 4 for r in rows} == {0}  # one vector step = 2 runners x 2 envs
    assert int(rows[-1]["step"]) <= 800
    (eval_csv,) = tmp_path.rglob("eval.csv")
    assert [r["step"] for r in csv.DictReader(eval_csv.open())] == ["0", "800"]


def test_unplaceable_runners_are_one_line(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    proc = _train(tmp_path, "task=cartpole-swingup", f"num_env_runners={cpus + 1}", "steps=10")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "num_cpus_per_env_runner" in proc.stderr
