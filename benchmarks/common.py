"""Shared benchmark helpers: interleaved timing (A/B alternated, medians) and CSV rows.

These VMs have multi-second bursts where torch runs ~5x slower (docs/design.md §3.4): timing A and B
in alternation and reporting medians keeps a burst from landing on one side only.
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def run_as_script(main: Callable[[], Any]) -> None:
    """`python -m benchmarks.<name>`: the process-start setup `python -m benchmarks` does (the
    GL backend, before anything imports dm_control), then the benchmark."""
    from ldmpc.mujoco_gl import configure_mujoco_gl

    configure_mujoco_gl()
    main()


def quick() -> bool:
    return os.environ.get("QUICK", "") not in ("", "0")


def env_list(name: str, default: str) -> list[str]:
    """A comma-separated knob from the environment (AB_TASKS, MT_TASKS, ...), empties dropped."""
    return [v for v in os.environ.get(name, default).split(",") if v]


def env_int(name: str, default: int) -> int:
    """An integer knob from the environment (AB_STEPS, PB_EPISODES, ...); a value that is not
    an integer is one line (UserError, exit 2 from `python -m benchmarks`), not a traceback."""
    from ldmpc.errors import UserError

    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"{name}={raw!r}: expected an integer") from None


def interleaved_ms(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Median ms per call of each fn, calling them round-robin so drift hits all equally."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(v) for name, v in samples.items()}


def machine() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else "",
        "torch": torch.__version__,
    }


def append_rows(name: str, rows: list[dict[str, Any]]) -> Path:
    """Append rows (plus a timestamp and machine info) to benchmarks/results/<name>.csv."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.csv"
    stamp = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **machine()}
    full = [{**stamp, **row} for row in rows]
    fields = list(dict.fromkeys(k for row in full for k in row))
    new = not path.exists()
    if not new:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
        if header != fields:  # columns changed: start a fresh file rather than misalign
            path.rename(path.with_suffix(f".{int(time.time())}.csv"))
            new = True
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows(full)
    return path


def ratio_rows(
    samples: dict[str, list[float]], label: str, unit: str, base: str, **extra: Any
) -> list[dict[str, Any]]:
    """One row per variant: its median, the ratio to the `base` variant's median, the repeats
    and any constant columns (`extra`)."""
    ref = statistics.median(samples[base])
    return [
        {
            label: name,
            unit: statistics.median(v),
            f"vs_{base.replace(' ', '_')}": statistics.median(v) / ref,
            "repeats": len(v),
            **extra,
        }
        for name, v in samples.items()
    ]


def table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of rows (for the console)."""
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, width))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, width)) for row in cells]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def make_agent(overrides: list[str], device: str = "auto") -> tuple[Any, Any]:
    """A fresh (untrained) agent for a task, with the real env's shapes."""
    from ldmpc.agent import Agent
    from ldmpc.config import load
    from ldmpc.runtime import resolve_device

    args = [*overrides, f"device={device}", "progress=false"]
    if os.environ.get("LDMPC_BENCH_NO_ENV") == "1":  # GPU boxes without the simulators
        from ldmpc.config import derive, parse

        cfg = parse(args)
        cfg = derive(cfg, *KNOWN_SHAPES[cfg.task])
    else:
        cfg = load(args)
    return cfg, Agent(cfg, resolve_device(cfg.device))


# (obs_shape, action_dim) of the benchmarks' tasks, for LDMPC_BENCH_NO_ENV=1 (a machine with
# torch but no simulator, e.g. a lent GPU box); tests/test_benchmarks.py checks them.
KNOWN_SHAPES = {"cartpole-swingup": ((5,), 1)}


def replay_batch(cfg: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """A random time-major replay batch over the config's whole window (horizon x max(scales))."""
    W, B = cfg.window, cfg.batch_size
    return {
        "obs": torch.randn(W + 1, B, *cfg.obs_shape, device=device),
        "action": torch.rand(W, B, cfg.action_dim, device=device) * 2 - 1,
        "reward": torch.randn(W, B, 1, device=device),
        "terminated": torch.zeros(W, B, 1, device=device),
    }


def gemm_gflops(
    rows: int, width: int, device: torch.device, dtype: torch.dtype, repeats: int
) -> float:
    """This machine's matmul rate at a model shape: [rows, width] @ [width, width] in `dtype`
    (the denominator of a "fraction of the GEMM rate", measured in the same run)."""
    a = torch.randn(rows, width, device=device, dtype=dtype)
    b = torch.randn(width, width, device=device, dtype=dtype)
    ms = interleaved_ms({"mm": lambda: (a @ b, sync(device))}, repeats=repeats)["mm"]
    return 2 * rows * width * width / (ms * 1e6)


def counted_flops(fn: Callable[[], Any]) -> int:
    """FLOPs torch's counter sees in one call of `fn` (matmuls and convolutions; what a GEMM
    rate can be compared with)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def random_obs(cfg: Any, num_envs: int, device: Any) -> Any:
    return torch.randn(num_envs, *cfg.obs_shape, device=device)


def sync(device: Any) -> None:
    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)
