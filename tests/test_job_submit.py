"""Cluster (issue 6, part 5): a real local head (`ray start --head`, token auth as Ray 2.60 has
it), `ray job submit --working-dir . -- ldmpc train ...` run to completion against it, the CLI
joining it with `address=`, and one-line errors for addresses where no cluster answers.

The head runs with `--block` in its own session and is stopped by signalling that session:
`ray stop` would stop every Ray on the machine, other tests' and other runs' included.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from actors import ray_init
from actors.ray_init import cluster_address, init_ray
from ldmpc.config import load
from ldmpc.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: `ray`, `ldmpc`, `python`
TINY = [
    "task=mw-reach", "model_size=1", "batch_size=16", "num_samples=16", "iterations=1",
    "num_elites=4", "num_pi_trajs=2", "progress=false", "torch_threads=1", "checkpoint_freq=0",
    "seed_steps=100", "steps=200", "eval_freq=200", "eval_episodes=1",
]  # fmt: skip
ONE_RUN_S = 400  # a tiny run costs ~1 min on 2 loaded cores


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Head:
    gcs: str  # what address= takes
    dashboard: str  # what `ray job submit --address` takes
    temp: str  # its RAY_TMPDIR (ray_current_cluster lies in <temp>/ray)
    env: dict[str, str]  # the environment `ray start` got (venv on PATH, token auth on)


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    temp = tempfile.mkdtemp(prefix="ldj")  # short: AF_UNIX socket paths are limited
    env = {
        **os.environ,  # RAY_AUTH_TOKEN: conftest.py's token for this test process
        "RAY_TMPDIR": temp,
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # SIGTERM stops it at once
        "RAY_worker_niceness": "0",  # as tests/ray_temp.py: not starved by the other worker
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # as `. .venv/bin/activate`
        "VIRTUAL_ENV": str(BIN.parent),
    }
    gcs, dash = _free_port(), _free_port()
    # Every fixed default port is made free too: other Rays on this machine hold 52365/10001.
    cmd = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--ray-client-server-port={_free_port()}", "--num-cpus=2",
    ]  # fmt: skip
    with open(os.path.join(temp, "head.log"), "w") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_for_file(os.path.join(temp, "ray", "ray_current_cluster"), proc, temp)
        yield Head(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", temp, env)
    finally:
        _stop_head(proc, temp)
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_file(path: str, proc: subprocess.Popen[bytes], temp: str) -> None:
    """`ray start` writes ray_current_cluster once the head is up."""
    deadline = time.monotonic() + 120
    while not os.path.exists(path):
        log = Path(temp, "head.log").read_text()[-3000:]
        assert proc.poll() is None, f"ray start --head exited:\n{log}"
        assert time.monotonic() < deadline, f"head not up after 120 s:\n{log}"
        time.sleep(0.5)


def _stop_head(proc: subprocess.Popen[bytes], temp: str) -> None:
    """SIGTERM to the head's session, then anything left that inherited its RAY_TMPDIR (a job's
    driver runs in a session of its own)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    for p in psutil.process_iter():
        try:
            if p.environ().get("RAY_TMPDIR") == temp:
                p.kill()
        except psutil.Error:
            pass


def _ldmpc(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ldmpc.cli", "train", *args],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip


def _driver_env() -> dict[str, str]:
    """A shell of this machine: no RAY_AUTH_MODE (joining turns it on when a token is at hand,
    as `ray start` does), its own empty RAY_TMPDIR."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    return {**env, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ldk"), "RAY_USAGE_STATS_ENABLED": "0"}


def _assert_run_dir(work_dir: Path) -> None:
    (run_dir,) = {p.parent for p in work_dir.rglob("train.csv")}
    assert list(csv.DictReader((run_dir / "train.csv").open())), "no training episodes logged"
    steps = [r["step"] for r in csv.DictReader((run_dir / "eval.csv").open())]
    assert steps == ["0", "200"]
    assert (run_dir / "checkpoints" / "latest.pt").is_file()


# ------------------------------------------------------------------------- against a real head


@pytest.mark.heavy
def test_job_submit_with_working_dir_trains_to_completion(head: Head, tmp_path: Path) -> None:
    # The README's form: the project is uploaded (.venv and .git are not: Ray excludes them and
    # honours .gitignore) and the job's `ldmpc` runs from the head's venv on its PATH.
    cmd = [
        str(BIN / "ray"), "job", "submit", "--address", head.dashboard, "--working-dir", str(ROOT),
        "--", "ldmpc", "train", *TINY, f"work_dir={tmp_path}",
    ]  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=head.env, capture_output=True, text=True, timeout=ONE_RUN_S
        )
        out = proc.stdout + proc.stderr
        # the job agent registers some seconds after ray_current_cluster is written
        if "No available agent" not in out or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert proc.returncode == 0, out[-4000:]
    assert "succeeded" in out and "eval  step=      200" in out
    assert "Traceback" not in out
    _assert_run_dir(tmp_path)
    # the upload was the project, not its 3 GB virtualenv
    pkgs = list(Path(head.temp).glob("ray/session_*/runtime_resources/working_dir_files/*/"))
    assert pkgs and all(not (p / ".venv").exists() and (p / "ldmpc").is_dir() for p in pkgs)


@pytest.mark.heavy
def test_cli_joins_a_running_cluster_with_address(head: Head, tmp_path: Path) -> None:
    env = _driver_env()
    try:
        proc = _ldmpc(
            *TINY, f"work_dir={tmp_path}", f"address={head.gcs}", env=env, timeout=ONE_RUN_S
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "Traceback" not in proc.stderr
        _assert_run_dir(tmp_path)
        # it joined the head: no Ray of its own was started under its RAY_TMPDIR
        assert not list(Path(env["RAY_TMPDIR"]).glob("ray/session_*"))
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def test_address_auto_finds_the_head_ray_start_recorded(
    head: Head, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_TMPDIR", head.temp)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    label, address = cluster_address(load(["address=auto"]))
    assert address.endswith(head.gcs.split(":")[1]) and label.startswith("address=auto (")


def test_an_http_port_is_not_taken_for_the_cluster(head: Head) -> None:
    with pytest.raises(UserError, match=r"an HTTP server answers there .*default 6379"):
        cluster_address(load([f"address={head.dashboard.removeprefix('http://')}"]))


def test_a_joined_cluster_short_of_cpus_waits_for_the_autoscaler_then_is_one_line(
    head: Head, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import ray

    # RAY_AUTH_MODE unset (or set before Ray was imported): joining turns token auth on and
    # refreshes Ray's config, as a local ray.init in this process would
    monkeypatch.setattr(ray_init, "CLUSTER_WAIT_S", 1.0)
    cfg = load([*TINY, f"address={head.gcs}", "num_env_runners=3"])  # the head has 2 CPUs
    try:
        with pytest.raises(UserError, match=r"needs 3 CPUs; this Ray has 2: lower them"):
            init_ray(cfg)
        assert not ray.is_initialized()  # it joined, waited, then disconnected
    finally:
        ray.shutdown()
    assert "waiting up to 1 s for the cluster to scale up" in capfd.readouterr().err


@pytest.mark.slow
def test_a_wrong_token_is_one_line(head: Head, tmp_path: Path) -> None:
    # Ray retries a refused token ~20 times (~20 s), a C++ warning line each: held back
    env = {**_driver_env(), "RAY_AUTH_TOKEN": "0" * 32}
    try:
        args = (*TINY, f"work_dir={tmp_path}", f"address={head.gcs}")
        proc = _ldmpc(*args, env=env, timeout=ONE_RUN_S)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and "refused this driver's auth token" in proc.stderr


# ---------------------------------------------------------------------- no cluster: one line


@pytest.mark.parametrize("address", ["closed-port", "auto"])
def test_no_cluster_at_the_address_is_one_line_exit_2(address: str, tmp_path: Path) -> None:
    # ray.init itself retries such an address for over 5 minutes
    address = f"127.0.0.1:{_free_port()}" if address == "closed-port" else address
    env = _driver_env()
    try:
        start = time.monotonic()
        proc = _ldmpc(*TINY, f"work_dir={tmp_path}", f"address={address}", env=env, timeout=120)
        took = time.monotonic() - start
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and 'start one with "ray start --head"' in proc.stderr
    assert took < 60  # the start-up imports; the probe itself is below (milliseconds)


def test_probe_of_a_closed_port_answers_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = _free_port()
    cfg = load([f"address=127.0.0.1:{port}"])
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"address=127.0.0.1:{port}: .*\(connection refused\)"):
        cluster_address(cfg)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("http://127.0.0.1:8265", "dashboard/job-server URL"),
        ("127.0.0.1", "expected auto, host:port or ray://host:port"),
        ("127.0.0.1:99999", "expected auto, host:port"),
        ("no-such-host.invalid:6379", "unknown host no-such-host.invalid"),
    ],
)
def test_malformed_addresses_are_one_line(
    address: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(UserError, match=message):
        cluster_address(load([f"address={address}"]))


def test_ray_address_from_a_job_is_used_and_local_means_local(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = _free_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")  # as `ray job submit` sets it
    with pytest.raises(UserError, match=rf"^RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster"):
        cluster_address(load([]))
    assert cluster_address(load(["address=local"])) is None
    monkeypatch.delenv("RAY_ADDRESS")
    assert cluster_address(load([])) is None
