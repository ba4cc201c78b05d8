"""Remote env runners (issue 6, part 1): a topology Ray cannot place fails with one line
instead of waiting forever. Two runners of two envs training through the CLI are in
tests/test_distributed.py (the async run), and in-process with faults (the sync run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
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


@pytest.mark.heavy
def test_unplaceable_runners_are_one_line(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    proc = _train(tmp_path, "task=cartpole-swingup", f"num_env_runners={cpus + 1}", "steps=10")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "num_cpus_per_env_runner" in proc.stderr
