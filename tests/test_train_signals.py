"""SIGTERM during `ldmpc train` (a real subprocess) leaves a loadable checkpoint, and
`resume=true` continues the run's counters and curve from it."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from ray_temp import ray_temp_env

from actors.ray_init import SHIELD_ENV
from ldmpc.checkpoint import load_checkpoint

TINY = [
    "task=mw-reach",  # 100-step episodes: a few episodes in seconds
    "model_size=1",
    "iterations=1",
    "num_samples=16",
    "num_elites=4",
    "num_pi_trajs=2",
    "batch_size=32",
    "seed_steps=100",
    "eval_episodes=2",
    "eval_freq=100000",
    "checkpoint_freq=0",
    "progress=false",
    "torch_threads=1",
]


_RAY_ENVS = ExitStack()  # each run's private Ray dir, removed after its test
_RAY_DIRS: list[str] = []


@pytest.fixture(autouse=True)
def _remove_ray_dirs() -> Iterator[None]:
    yield
    _RAY_ENVS.close()
    _RAY_DIRS.clear()


def _train(tmp: Path, *extra: str, own_group: bool = False) -> subprocess.Popen[str]:
    """`ldmpc train` with its own Ray temp dir; own_group: in a new session and process group,
    with the Ray shield on, as a batch job would run it."""
    ray_env = _RAY_ENVS.enter_context(ray_temp_env("ldray"))
    _RAY_DIRS.append(ray_env["RAY_TMPDIR"])
    env = {**os.environ, **ray_env}
    if own_group:
        env[SHIELD_ENV] = "1"
    args = [sys.executable, "-m", "ldmpc.cli", "train", *TINY, f"work_dir={tmp / 'runs'}", *extra]
    return subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=own_group,
    )


def _rows(path: Path) -> int:
    """Data rows of a CSV so far (0 when it does not exist yet)."""
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float, rows: int = 2) -> None:
    """Until `rows` episodes are logged: 2 means the run learned for one episode."""
    deadline = time.time() + timeout
    while _rows(path) < rows:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() < deadline, f"{path}: fewer than {rows} rows in {timeout} s"
        time.sleep(0.5)


@pytest.mark.heavy
def test_sigterm_writes_final_checkpoint_and_resume_continues(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "mw-reach" / "1" / "default"
    proc = _train(tmp_path, "steps=1000000")
    _wait_for(run_dir / "train.csv", proc, timeout=240)  # training is live
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    ckpt = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    stopped_at = int(ckpt["counters"]["env_steps"])
    assert stopped_at >= 200

    target = stopped_at + 200
    proc = _train(tmp_path, f"steps={target}", "resume=true")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    resumed = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert int(resumed["counters"]["env_steps"]) >= target
    with open(run_dir / "train.csv", newline="") as fh:
        steps = [int(float(r["step"])) for r in csv.DictReader(fh)]
    assert steps == sorted(steps) and steps[-1] > stopped_at  # the curve continues, no restart


@pytest.mark.heavy
def test_sigterm_to_the_whole_process_group_still_checkpoints(tmp_path: Path) -> None:
    """`timeout`/scancel signal every process of the job: Ray's own processes (GCS, raylet, a
    remote runner and a replay shard here) must outlive the driver's final checkpoint."""
    run_dir = tmp_path / "runs" / "mw-reach" / "1" / "default"
    remote = ["num_env_runners=1", "replay_shards=1", "num_cpus_per_env_runner=0.5"]
    proc = _train(tmp_path, "steps=1000000", *remote, own_group=True)
    _wait_for(run_dir / "train.csv", proc, timeout=240)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "SIGTERM: checkpoint" in out, out
    ckpt = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert int(ckpt["counters"]["env_steps"]) >= 200
    left = subprocess.run(["pgrep", "-f", _RAY_DIRS[-1]], capture_output=True, text=True).stdout
    assert not left, f"Ray processes outlived the run: {left}"


def _train_with_hook(
    tmp: Path, hook: str, value: str, marker: str, *extra: str, own_group: bool = False
) -> subprocess.Popen[str]:
    """A run started with the test-only variable `hook`=`value`, returned once a line of its
    output holds `marker` (the hook's announcement that its phase has begun)."""
    os.environ[hook] = value
    try:
        proc = _train(tmp, *extra, own_group=own_group)
    finally:
        del os.environ[hook]
    deadline = time.time() + 240
    while marker not in (line := proc.stdout.readline()):
        assert line or proc.poll() is None, f"the run ended before {marker!r}"
        assert time.time() < deadline, f"no {marker!r} within 240 s"
    return proc


def _train_inside_slow_eval(tmp: Path, step_delay_s: float) -> subprocess.Popen[str]:
    """A run whose step-0 evaluation sleeps `step_delay_s` per step (the test-only hook),
    returned once that evaluation has announced itself."""
    from ldmpc.evaluate import TEST_STEP_DELAY_ENV

    return _train_with_hook(
        tmp, TEST_STEP_DELAY_ENV, str(step_delay_s), TEST_STEP_DELAY_ENV,
        "steps=1000000", "eval_freq=100",
    )  # fmt: skip


@pytest.mark.heavy
def test_sigterm_inside_an_evaluation_is_answered_and_the_eval_is_owed(tmp_path: Path) -> None:
    """The step-0 evaluation runs (made long by a test-only delay per step) when SIGTERM
    arrives: the run exits within seconds with a checkpoint at step 0, and the resumed run
    evaluates step 0 first, so the curve has no hole."""
    run_dir = tmp_path / "runs" / "mw-reach" / "1" / "default"
    proc = _train_inside_slow_eval(tmp_path, 1.0)  # 100-step episodes: a 100 s evaluation
    time.sleep(2.0)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    waited = time.time() - sent
    assert proc.returncode == 0, out
    print(f"stop latency inside an evaluation: {waited:.2f} s")
    assert waited < 30, f"SIGTERM answered after {waited:.1f} s"  # an eval step is ~1 s here
    assert "continue with resume=true" in out
    assert int(load_checkpoint(run_dir / "checkpoints" / "latest.pt")["counters"]["env_steps"]) == 0
    assert _rows(run_dir / "eval.csv") == 0  # not half an evaluation: none, owed

    proc = _train(tmp_path, "steps=100", "eval_freq=100", "resume=true")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    with open(run_dir / "eval.csv", newline="") as fh:
        steps = [int(float(r["step"])) for r in csv.DictReader(fh)]
    assert steps == [0, 100]


def _train_until(
    tmp: Path, phase: str, *extra: str, own_group: bool = False
) -> subprocess.Popen[str]:
    """A run returned once it announced `phase` (the test-only LDMPC_TEST_ANNOUNCE line)."""
    from ldmpc.checkpoint import TEST_ANNOUNCE_ENV

    marker = f"{TEST_ANNOUNCE_ENV}: {phase}"
    return _train_with_hook(tmp, TEST_ANNOUNCE_ENV, "1", marker, *extra, own_group=own_group)


@pytest.mark.heavy
def test_sigterm_during_start_up_ends_the_run_cleanly(tmp_path: Path) -> None:
    """SIGTERM in the set-up right after the local Ray started (the shield still on) goes to
    the run's handler, not to the ones ray.init installed (its driver's exits with code 15,
    its core worker's dumps a stack and aborts with 134): exit 0, one line, no checkpoint
    (nothing was trained), no Ray process left."""
    run_dir = tmp_path / "runs" / "mw-reach" / "1" / "default"
    proc = _train_until(tmp_path, "Ray is up", "steps=1000000", own_group=True)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    print(f"stop latency in the start-up: {time.time() - sent:.2f} s")
    assert proc.returncode == 0, out
    assert "SIGTERM during start-up: stopped, nothing was trained" in out, out
    assert "SIGTERM received" not in out and "Traceback" not in out, out
    assert not (run_dir / "checkpoints" / "latest.pt").exists()
    left = subprocess.run(["pgrep", "-f", _RAY_DIRS[-1]], capture_output=True, text=True).stdout
    assert not left, f"Ray processes outlived the run: {left}"


@pytest.mark.heavy
def test_sigterm_during_the_first_compilation_abandons_it(tmp_path: Path) -> None:
    """compile=true: SIGTERM as the update's first compilation starts (announced by a
    test-only line) is answered at once, not after the compilation (10-90 s): the run
    checkpoints the end of its seed phase with no update made, and the resumed run pays the
    owed updates and goes on."""
    run_dir = tmp_path / "runs" / "mw-reach" / "1" / "default"
    # no step-0 evaluation: its plan would be the first compilation
    proc = _train_until(
        tmp_path, "compiling update", "steps=1000000", "compile=true", "eval_freq=0"
    )
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    waited = time.time() - sent
    print(f"stop latency inside a compilation: {waited:.2f} s")
    assert proc.returncode == 0, out
    assert "continue with resume=true" in out and "Traceback" not in out, out
    counters = load_checkpoint(run_dir / "checkpoints" / "latest.pt")["counters"]
    assert int(counters["env_steps"]) >= 100 and int(counters["updates"]) == 0, counters

    proc = _train(tmp_path, "steps=300", "compile=true", "eval_freq=0", "resume=true")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    counters = load_checkpoint(run_dir / "checkpoints" / "latest.pt")["counters"]
    assert int(counters["env_steps"]) >= 300 and int(counters["updates"]) >= 300, counters


@pytest.mark.heavy
def test_sigterm_during_a_checkpoint_write_finishes_it_then_stops(tmp_path: Path) -> None:
    """SIGTERM while a periodic checkpoint is being written (paused by a test-only delay
    between its step file and latest.pt): the write completes, the final checkpoint follows,
    exit 0; no temp file is left, latest.pt is the newest step, and resume continues."""
    from ldmpc.atomic import is_temp_file
    from ldmpc.checkpoint import TEST_SAVE_DELAY_ENV, latest_checkpoint

    run_dir = tmp_path / "runs" / "mw-reach" / "1" / "default"
    marker = f"{TEST_SAVE_DELAY_ENV}: between step_200.pt"
    proc = _train_with_hook(
        tmp_path, TEST_SAVE_DELAY_ENV, "2", marker, "steps=1000000", "checkpoint_freq=200"
    )
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "continue with resume=true" in out, out
    folder = run_dir / "checkpoints"
    assert not [f.name for f in folder.iterdir() if is_temp_file(f.name)]
    newest = latest_checkpoint(run_dir)
    stopped_at = int(load_checkpoint(folder / "latest.pt")["counters"]["env_steps"])
    assert newest is not None and newest.name == f"step_{stopped_at}.pt" and stopped_at >= 200

    proc = _train(tmp_path, f"steps={stopped_at + 100}", "resume=true")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    assert int(load_checkpoint(folder / "latest.pt")["counters"]["env_steps"]) >= stopped_at + 100


@pytest.mark.heavy
def test_a_second_ctrl_c_exits_at_once_and_says_what_is_not_saved(tmp_path: Path) -> None:
    """SIGINT inside the step-0 evaluation (slowed by the test-only delay) asks for a graceful
    stop; a second SIGINT before that stop finishes exits at once, code 130, with one line
    saying that nothing of the run is saved, and writes no checkpoint."""
    run_dir = tmp_path / "runs" / "mw-reach" / "1" / "default"
    proc = _train_inside_slow_eval(tmp_path, 3.0)  # each evaluation step sleeps 3 s
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)  # inside the same 3 s evaluation step: the first stop is still pending
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    waited = time.time() - sent
    print(f"second Ctrl-C answered in {waited:.2f} s")
    assert proc.returncode == 130, out
    assert "Ctrl-C again: exit now" in out  # the first one said how to skip the checkpoint
    assert "ldmpc: interrupted at step 0 without a checkpoint: nothing of this run is saved" in out
    assert "Traceback" not in out, out
    assert not (run_dir / "checkpoints" / "latest.pt").exists()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 200 MB tmpfs (CI runs as root); skipped where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(disk)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()[:120]}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.heavy
def test_a_full_disk_ends_the_run_in_one_line_and_keeps_the_last_checkpoint(
    small_disk: Path,
) -> None:
    """The disk fills up after the checkpoint at step 100: the next checkpoint write fails,
    the run exits 2 with one line naming the file and the space, the step-100 checkpoint
    still loads, and once space is freed resume=true continues from it."""
    import shutil

    from ldmpc.checkpoint import latest_checkpoint

    run_dir = small_disk / "runs" / "mw-reach" / "1" / "default"
    proc = _train(small_disk, "steps=100000", "checkpoint_freq=100")
    deadline = time.time() + 240
    while not (run_dir / "checkpoints" / "step_100.pt").exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, "no checkpoint at step 100 within 240 s"
        time.sleep(0.2)
    filler = small_disk / "filler"
    with open(filler, "wb") as fh:  # leave ~1 MB: logs fit, a checkpoint (~20 MB) does not
        size = shutil.disk_usage(small_disk).free - 1_000_000
        while True:  # the run writes meanwhile: retry smaller when it took some of the space
            try:
                os.posix_fallocate(fh.fileno(), 0, size)
                break
            except OSError:
                size -= 1_000_000
                assert size > 0, "the run filled the disk by itself"
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("ldmpc: error:")]
    assert len(errors) == 1 and "no space left to write" in errors[0], out[-3000:]
    assert str(run_dir) in errors[0] and "MB free on its filesystem" in errors[0]
    last = latest_checkpoint(run_dir)
    assert last is not None and last.name == "step_100.pt"
    assert int(load_checkpoint(last)["counters"]["env_steps"]) == 100

    filler.unlink()
    proc = _train(small_disk, "steps=200", "checkpoint_freq=100", "resume=true")
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]
    assert int(load_checkpoint(latest_checkpoint(run_dir))["counters"]["env_steps"]) == 200
