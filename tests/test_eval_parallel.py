"""Evaluation beside training (eval_parallel=true, `actors.evaluator`): the same numbers at the
same steps as an evaluation in the driver, training unchanged by where it runs, and an
evaluation still in flight when a run stops is done when the run resumes (no hole in the curve).
Real `ldmpc train` processes on a real local Ray."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_temp import ray_temp_env

from actors.evaluator import TEST_DELAY_ENV
from ldmpc.checkpoint import load_checkpoint

TINY = [
    "task=mw-reach",  # 100-step episodes
    "model_size=1",
    "iterations=1",
    "num_samples=16",
    "num_elites=4",
    "num_pi_trajs=2",
    "batch_size=32",
    "seed_steps=100",
    "eval_episodes=2",
    "eval_freq=100",
    "checkpoint_freq=0",
    "progress=false",
    "torch_threads=1",
    "eval_parallel=true",
]


def _train(tmp: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "ldmpc.cli", "train", *TINY, f"work_dir={tmp}", *extra]
    return subprocess.Popen(
        args,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 400) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def _csv(path: Path, *columns: str) -> list[tuple[str, ...]]:
    with open(path, newline="") as fh:
        return [tuple(row[c] for c in columns) for row in csv.DictReader(fh)]


@pytest.mark.heavy
def test_beside_training_gives_the_numbers_of_the_driver(tmp_path: Path) -> None:
    with ray_temp_env("ldev") as ray_env:
        for where in ("false", "true"):
            _finish(_train(tmp_path, "steps=300", f"exp_name={where}", f"eval_parallel={where}",
                           env=ray_env))  # fmt: skip
    inline, parallel = (tmp_path / "mw-reach" / "1" / name for name in ("false", "true"))
    cols = ("step", "episode_reward", "episode_reward_std", "episode_success")
    evals = _csv(inline / "eval.csv", *cols)
    assert [row[0] for row in evals] == ["0", "100", "200", "300"]
    assert _csv(parallel / "eval.csv", *cols) == evals  # same snapshot, same eval, same step
    # training does not depend on where evaluation runs (it draws nothing from the run's RNG)
    episodes = ("step", "episode_reward", "updates")
    assert _csv(parallel / "train.csv", *episodes) == _csv(inline / "train.csv", *episodes)


@pytest.mark.heavy
def test_an_evaluation_in_flight_at_a_stop_is_done_on_resume(tmp_path: Path) -> None:
    run_dir = tmp_path / "mw-reach" / "1" / "default"
    with ray_temp_env("ldev") as ray_env:
        # evaluations hang in the actor while the run trains on; stop it once it is past step 100
        hang = {**ray_env, TEST_DELAY_ENV: "3600"}
        proc = _train(tmp_path, "steps=300", "checkpoint_freq=100", env=hang)
        try:
            deadline = time.time() + 300
            while not (run_dir / "checkpoints" / "step_100.pt").exists():
                assert proc.poll() is None, "the run ended before step 100"
                assert time.time() < deadline, "no checkpoint at step 100 in 300 s"
                time.sleep(0.5)
            t0 = time.time()
            proc.send_signal(signal.SIGTERM)
            out = _finish(proc, timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert time.time() - t0 < 30, out
        assert "SIGTERM: checkpoint" in out, out
        assert not (run_dir / "eval.csv").exists() or not _csv(run_dir / "eval.csv", "step")
        ckpt = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
        stopped_at = int(ckpt["counters"]["env_steps"])
        owed = sorted(ckpt["payload"]["owed_evals"])
        assert owed == list(range(0, stopped_at + 1, 100))[: len(owed)] and owed[0] == 0, owed

        _finish(_train(tmp_path, "steps=300", "resume=true", env=ray_env))
    assert [row[0] for row in _csv(run_dir / "eval.csv", "step")] == ["0", "100", "200", "300"]
    assert not load_checkpoint(run_dir / "checkpoints" / "latest.pt")["payload"]["owed_evals"]


@pytest.mark.heavy
def test_an_overlapped_run_evaluates_at_every_eval_step(tmp_path: Path) -> None:
    """overlap=true evaluates in the driver, between rounds (its two threads joined) or beside
    training: every evaluation lands, at its step, and none is left owed at the end."""
    with ray_temp_env("ldev") as ray_env:
        for where in ("false", "true"):
            _finish(_train(tmp_path, "steps=300", "overlap=true", f"exp_name={where}",
                           f"eval_parallel={where}", env=ray_env))  # fmt: skip
    for where in ("false", "true"):
        run_dir = tmp_path / "mw-reach" / "1" / where
        assert [row[0] for row in _csv(run_dir / "eval.csv", "step")] == ["0", "100", "200", "300"]
        assert not load_checkpoint(run_dir / "checkpoints" / "latest.pt")["payload"]["owed_evals"]
