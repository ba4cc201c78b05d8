"""Every bad input: a real `ldmpc` subprocess, exit code 2, ONE line on stderr, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ldmpc.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


BAD_INPUTS = [
    (["train", "task=walker-walkk"], "did you mean: walker-walk"),
    (["train", "horizn=5"], "did you mean: horizon"),
    (["train", "steps=-5"], "steps=-5"),
    (["train", "model_size=7"], "allowed 1, 5, 19, 48, 317"),
    (["train", "lr=fast"], "expected a number"),
    (["train", "task=mw-reach,myo-reach"], "must share the action repeat"),
    (["train", "async=true"], "num_env_runners >= 1"),
    (["eval", "task=cartpole-swingup"], "checkpoint="),
    (["tune", "tune_configs/missing.yaml"], "sweep file not found"),
    (["tasks", "extra"], "no arguments"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_unwritable_work_dir(tmp_path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    blocker = ro / "file"
    blocker.write_text("x")
    proc = run_cli("train", f"work_dir={blocker}/runs", "steps=10")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "not a writable directory" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="as root every access check passes: the case")
def test_run_dir_that_root_cannot_create_is_one_line() -> None:
    """/proc passes os.access for root; creating a folder there fails (no traceback, exit 2)."""
    proc = run_cli("train", "work_dir=/proc/ldmpc-cannot-write", "steps=10")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot create the run directory" in lines[0], proc.stderr


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["obs=rgb"], {"MUJOCO_GL": "bogus"}, "obs=rgb is unavailable on this machine"),
        (["obs=rgb", "task=myo-reach"], {}, "obs=rgb is not supported for myosuite"),
        (["obs=depth"], {}, "obs=depth: allowed: state, rgb"),
    ],
    ids=["no-renderer", "myosuite", "unknown"],
)
def test_rgb_problems_are_one_line(args: list[str], env: dict[str, str], needle: str) -> None:
    proc = run_cli("train", *args, env=env)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert needle in proc.stderr


def test_debug_env_shows_traceback() -> None:
    proc = run_cli("train", "steps=-5", env={"LDMPC_DEBUG": "1"})
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_train_help_lists_keys() -> None:
    proc = run_cli("train", "--help")
    assert proc.returncode == 0
    assert "horizon=3" in proc.stdout and "model_size=5" in proc.stdout


def test_output_cut_by_a_pipe_is_not_a_traceback() -> None:
    proc = subprocess.run(
        f"{sys.executable} -m ldmpc.cli train --help | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.startswith("usage: ldmpc train")
    assert "Traceback" not in proc.stderr


def test_tasks_lists_dmcontrol() -> None:
    proc = run_cli("tasks")
    assert proc.returncode == 0, proc.stderr
    assert "cartpole-swingup" in proc.stdout and "dmcontrol" in proc.stdout.lower()
