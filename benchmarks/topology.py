"""Shared by `runner_scaling`, `learner_scaling` and `overlap`: build a real Ray topology in this
process, train past its warm-up, then time env steps and updates.

Each measurement starts its own local Ray (temp files under a short temp dir) and stops it, so
topologies never share actors. mw-reach: 100-step episodes, so replay holds whole episodes (and
learning starts) within a few hundred steps. The planning budget is the `make train` one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

# The `make train` planning budget on a short-episode task; every topology key comes on top.
BASE = [
    "task=mw-reach", "model_size=1", "batch_size=64", "iterations=2", "num_samples=128",
    "num_elites=16", "num_pi_trajs=8", "progress=false", "checkpoint_freq=0", "save_agent=false",
    "save_csv=false", "torch_threads=1", "eval_freq=1000000",
]  # fmt: skip


def measure(overrides: list[str], warm_steps: int, timed_steps: int) -> dict[str, float]:
    """Env steps/s and updates/s of one topology between `warm_steps` and +`timed_steps`."""
    import ray

    from actors.algorithm import build_algorithm
    from actors.ray_init import init_ray
    from ldmpc.config import load
    from ldmpc.runtime import set_threads

    work = tempfile.mkdtemp(prefix="ldb")  # short: Ray's unix socket paths are limited
    os.environ["RAY_TMPDIR"] = work
    cfg = load([*BASE, f"work_dir={work}", *overrides])
    set_threads(cfg.torch_threads)
    init_ray(cfg)
    try:
        algo = build_algorithm(cfg)
        try:
            algo.sample_until = 1 << 60
            _train_to(algo, warm_steps)
            c = algo.counters
            spent = {name: _time_calls(algo, name) for name in ("_collect", "_learn")}
            t0, steps0, updates0 = time.perf_counter(), c.env_steps, c.updates
            _train_to(algo, warm_steps + timed_steps)
            dt = time.perf_counter() - t0
            steps = max(c.env_steps - steps0, 1)
            return {
                "env_steps_per_s": (c.env_steps - steps0) / dt,
                "updates_per_s": (c.updates - updates0) / dt,
                "updates_per_step": (c.updates - updates0) / steps,
                # where a synchronous round's time goes (the driver's view; async rounds never
                # call _collect): acting + env stepping vs updates + weight sync, per env step
                "act_s_per_step": spent["_collect"][0] / steps,
                "learn_s_per_step": spent["_learn"][0] / steps,
            }
        finally:
            algo.stop()
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


def _time_calls(obj: Any, name: str) -> list[float]:
    """Wrap obj.<name> so every call adds its wall time to the returned one-element list."""
    real, total = getattr(obj, name), [0.0]

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - t

    setattr(obj, name, timed)
    return total


def _train_to(algo: Any, steps: int) -> None:
    while algo.counters.env_steps < steps:
        algo.train()


def cores() -> int:
    return len(os.sched_getaffinity(0))
