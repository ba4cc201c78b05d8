"""Soak: one long `ldmpc train` at the `make train` budget, its resources sampled as it runs.

A run that leaks fails hours in, on a machine nobody watches. This starts the `make train`
command (cartpole-swingup, seed 1) for SOAK_STEPS agent steps and every SOAK_EVERY_S seconds
samples the driver and every process below it (Ray's GCS, raylet, workers and actors): resident
memory (RSS, summed and per process role), open file descriptors, threads, processes, and the
run directory's size split into checkpoints, replay snapshot and the rest (CSV logs, curve).
Samples go to benchmarks/results/soak_samples.csv as they are taken (the run can be watched).

Verdicts, measured after the first 10 % of the run's wall time (compiles, replay filling up):
RSS grows by at most 5 % (last sample vs the first one after warm-up), descriptors and threads
stay flat (at most SOAK_SLACK above their warm-up value; default 8: Ray opens and closes a few
sockets on its own), and the checkpoints directory holds no more step files than the retention
rule keeps (`ldmpc.checkpoint.save_run_checkpoint`: the newest 3, plus latest.pt).

Knobs: SOAK_STEPS (100000; QUICK=1: 4000), SOAK_EVERY_S (60; QUICK=1: 10), SOAK_ARGS (extra
`key=value` overrides, space separated), SOAK_SLACK (8).
"""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import RESULTS, append_rows, env_int, quick, run_as_script, table
from benchmarks.train_speed import MAKE_TRAIN

KEEP_STEP_FILES = 3  # save_run_checkpoint's default retention
FIELDS = [
    "elapsed_s",
    "step",
    "rss_mb",
    "rss_driver_mb",
    "rss_ray_mb",
    "fds",
    "threads",
    "processes",
    "run_dir_mb",
    "checkpoints_mb",
    "step_files",
    "replay_mb",
]


def _dir_mb(path: Path) -> float:
    if not path.exists():
        return 0.0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _last_step(run_dir: Path) -> int:
    train_csv = run_dir / "train.csv"
    if not train_csv.exists():
        return 0
    with open(train_csv) as fh:
        rows = list(csv.DictReader(fh))
    return int(float(rows[-1]["step"])) if rows else 0


def sample(pid: int, run_dir: Path, t0: float) -> dict[str, Any] | None:
    """One row of resource figures for the process tree under `pid` (None once it is gone)."""
    rss = driver = fds = threads = alive = 0
    for proc in _tree(pid):
        try:
            with proc.oneshot():
                mem = proc.memory_info().rss
                fds += proc.num_fds()
                threads += proc.num_threads()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        alive += 1
        rss += mem
        driver += mem if proc.pid == pid else 0
    if not alive:
        return None
    ckpt = run_dir / "checkpoints"
    return {
        "elapsed_s": round(time.monotonic() - t0, 1),
        "step": _last_step(run_dir),
        "rss_mb": rss / 1e6,
        "rss_driver_mb": driver / 1e6,
        "rss_ray_mb": (rss - driver) / 1e6,
        "fds": fds,
        "threads": threads,
        "processes": alive,
        "run_dir_mb": _dir_mb(run_dir),
        "checkpoints_mb": _dir_mb(ckpt),
        "step_files": len(list(ckpt.glob("step_*.pt"))) if ckpt.exists() else 0,
        "replay_mb": _dir_mb(run_dir / "replay"),
    }


def verdicts(samples: list[dict[str, Any]], slack: int) -> list[dict[str, Any]]:
    """Pass/fail per criterion over the samples after the first 10 % of the wall time."""
    end = samples[-1]["elapsed_s"]
    steady = [s for s in samples if s["elapsed_s"] >= 0.1 * end] or samples[-1:]
    first, last = steady[0], steady[-1]
    growth = last["rss_mb"] / first["rss_mb"] - 1
    rows = [
        {
            "check": "RSS growth after warm-up",
            "value": f"{100 * growth:+.1f} % ({first['rss_mb']:.0f} -> {last['rss_mb']:.0f} MB)",
            "pass": growth <= 0.05,
        }
    ]
    for key in ("fds", "threads", "processes"):
        top = max(s[key] for s in steady)
        rows.append(
            {
                "check": f"{key} flat",
                "value": f"{first[key]} at warm-up, max {top}, last {last[key]}",
                "pass": top <= first[key] + slack,
            }
        )
    most = max(s["step_files"] for s in samples)
    rows.append(
        {
            "check": "checkpoint retention",
            "value": f"at most {most} step files (rule keeps {KEEP_STEP_FILES})",
            "pass": most <= KEEP_STEP_FILES,
        }
    )
    rows.append(
        {
            "check": "run directory",
            "value": f"{last['run_dir_mb']:.0f} MB (checkpoints {last['checkpoints_mb']:.0f}, "
            f"replay {last['replay_mb']:.0f})",
            "pass": True,  # reported: the replay snapshot grows with replay, up to capacity
        }
    )
    return rows


def main() -> None:
    steps = env_int("SOAK_STEPS", 4000 if quick() else 100_000)
    every = env_int("SOAK_EVERY_S", 10 if quick() else 60)
    slack = env_int("SOAK_SLACK", 8)
    extra = os.environ.get("SOAK_ARGS", "").split()
    out_csv = RESULTS / "soak_samples.csv"
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soak_") as tmp:
        cmd = [sys.executable, "-m", "ldmpc.cli", "train", *MAKE_TRAIN, f"steps={steps}"]
        cmd += [f"work_dir={tmp}", "exp_name=soak", "progress=false", *extra]
        run_dir = Path(tmp) / "cartpole-swingup" / "1" / "soak"
        samples: list[dict[str, Any]] = []
        t0 = time.monotonic()
        with open(Path(tmp) / "soak.log", "w") as log, open(out_csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, FIELDS)
            writer.writeheader()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            try:
                while proc.poll() is None:
                    row = sample(proc.pid, run_dir, t0)
                    if row is not None:
                        samples.append(row)
                        writer.writerow({k: _round(v) for k, v in row.items()})
                        fh.flush()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=every)
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=120)
        if proc.returncode != 0 or len(samples) < 2:
            tail = (Path(tmp) / "soak.log").read_text()[-2000:]
            raise RuntimeError(f"soak run exited {proc.returncode}:\n{tail}")
    rows = verdicts(samples, slack)
    print(table(rows))
    summary = {
        "steps": steps,
        "minutes": samples[-1]["elapsed_s"] / 60,
        "samples": len(samples),
        **{r["check"]: ("pass " if r["pass"] else "FAIL ") + r["value"] for r in rows},
    }
    print(f"samples in {out_csv}; summary appended to {append_rows('soak', [summary])}")


def _round(v: Any) -> Any:
    return round(v, 1) if isinstance(v, float) else v


if __name__ == "__main__":
    run_as_script(main)
