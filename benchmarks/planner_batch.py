"""Batched planning: per-env ms for 1/4/16 envs per call, the batching ratio, and the roofline
fraction (achieved GFLOP/s of a planning call over a plain matmul of the same width, same run).

Targets (issue 5): CPU roofline >= 0.5; GPU batching >= 10x.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    append_rows,
    interleaved_ms,
    make_agent,
    quick,
    random_obs,
    run_as_script,
    sync,
    table,
)

ENVS = (1, 4, 16)


def _plan_call(agent, obs):
    def call() -> None:
        agent.act(obs, None, None, eval_mode=False)
        sync(agent.device)

    return call


def _flops(agent, obs) -> int:
    with FlopCounterMode(display=False) as counter:
        agent.act(obs, None, None, eval_mode=False)
    return counter.get_total_flops()


def _matmul_gflops(rows: int, width: int, device: torch.device, repeats: int) -> float:
    a = torch.randn(rows, width, device=device)
    b = torch.randn(width, width, device=device)
    ms = interleaved_ms({"mm": lambda: (a @ b, sync(device))}, repeats=repeats)["mm"]
    return 2 * rows * width * width / (ms * 1e6)


def main() -> None:
    repeats = 3 if quick() else 10
    sizes = (1,) if quick() else (1, 5)
    rows = []
    for size in sizes:
        cfg, agent = make_agent(["task=cartpole-swingup", f"model_size={size}"])
        obs = {e: random_obs(cfg, e, agent.device) for e in ENVS}
        calls = {f"E{e}": _plan_call(agent, obs[e]) for e in ENVS}
        ms = interleaved_ms(calls, repeats=repeats, warmup=1)
        flops16 = _flops(agent, obs[16])
        gflops = flops16 / (ms["E16"] * 1e6)
        width = cfg.mlp_dim
        mm = _matmul_gflops(16 * cfg.num_samples, width, agent.device, repeats)
        row = {"model_size": size, "device": agent.device.type, "threads": torch.get_num_threads()}
        for e in ENVS:
            row[f"ms_per_env_E{e}"] = ms[f"E{e}"] / e
        row["batching_ratio_16"] = 16 * ms["E1"] / ms["E16"]
        row["plan_gflops"] = gflops
        row["matmul_gflops"] = mm
        row["roofline_fraction"] = gflops / mm
        rows.append(row)
    print(table(rows))
    print(f"rows appended to {append_rows('planner_batch', rows)}")


if __name__ == "__main__":
    run_as_script(main)
