"""Batched planning: per-env ms for 1/4/16 envs per call, the batching ratio, and the roofline
fraction (achieved GFLOP/s of a planning call over a plain matmul of the same width, same run).
Then one decision for one env with the fast settings (compiled, precision=auto, what `make
train` runs): its ms and its rate (FLOPs counted on the eager call) as a fraction of this
machine's GEMM rate in the fast dtype at the plan's shape ([num_samples, mlp_dim] @ [mlp_dim,
mlp_dim]), measured in the same run.

Targets (issue 5): CPU roofline >= 0.5; GPU batching >= 10x; the speed issue: the fast
decision >= 0.5 of the bf16 GEMM rate.
"""

from __future__ import annotations

import torch

from benchmarks.common import (
    append_rows,
    counted_flops,
    gemm_gflops,
    interleaved_ms,
    make_agent,
    quick,
    random_obs,
    run_as_script,
    sync,
    table,
)
from ldmpc.precision import resolve_precision

ENVS = (1, 4, 16)


def _plan_call(agent, obs):
    def call() -> None:
        agent.act(obs, None, None, eval_mode=False)
        sync(agent.device)

    return call


def _fast_decision(size: int, eager_agent, obs, repeats: int) -> dict[str, float | str]:
    """ms of one compiled decision in the fast dtype, and its fraction of the GEMM rate."""
    cfg, agent = make_agent(
        ["task=cartpole-swingup", f"model_size={size}", "compile=true", "precision=auto"]
    )
    ms = interleaved_ms({"fast": _plan_call(agent, obs)}, repeats=repeats, warmup=2)["fast"]
    flops = counted_flops(_plan_call(eager_agent, obs))
    dtype, _ = resolve_precision("auto", agent.device.type)
    gemm = gemm_gflops(cfg.num_samples, cfg.mlp_dim, agent.device, dtype, repeats)
    rate = flops / (ms * 1e6)
    return {
        "fast_ms_E1": ms,
        "fast_dtype": str(dtype).removeprefix("torch."),
        "fast_gflops": rate,
        "gemm_gflops_fast_dtype": gemm,
        "fast_fraction_of_gemm": rate / gemm,
    }


def main() -> None:
    repeats = 3 if quick() else 10
    sizes = (1,) if quick() else (1, 5)
    rows = []
    for size in sizes:
        cfg, agent = make_agent(["task=cartpole-swingup", f"model_size={size}"])
        obs = {e: random_obs(cfg, e, agent.device) for e in ENVS}
        calls = {f"E{e}": _plan_call(agent, obs[e]) for e in ENVS}
        ms = interleaved_ms(calls, repeats=repeats, warmup=1)
        flops16 = counted_flops(_plan_call(agent, obs[16]))
        gflops = flops16 / (ms["E16"] * 1e6)
        width = cfg.mlp_dim
        mm = gemm_gflops(16 * cfg.num_samples, width, agent.device, torch.float32, repeats)
        row = {"model_size": size, "device": agent.device.type, "threads": torch.get_num_threads()}
        for e in ENVS:
            row[f"ms_per_env_E{e}"] = ms[f"E{e}"] / e
        row["batching_ratio_16"] = 16 * ms["E1"] / ms["E16"]
        row["plan_gflops"] = gflops
        row["matmul_gflops"] = mm
        row["roofline_fraction"] = gflops / mm
        row.update(_fast_decision(size, agent, obs[1], repeats))
        rows.append(row)
    print(table(rows))
    print(f"rows appended to {append_rows('planner_batch', rows)}")


if __name__ == "__main__":
    run_as_script(main)
