"""ms per gradient update at model_size 1 and 5, batch 256: eager fp32, compiled fp32 and the
fast settings (compiled, precision=auto), alternated in one run.

The reference is TD-MPC2's own code measured on this machine kind (docs/design.md §3.4, 2 threads):
125 ms (size 1) and 488 ms (size 5); the speed issue's target for the fast settings is <= 0.3x of
those. The fast update's rate (torch's FLOP counter over one eager update, divided by its time)
is also given as a fraction of this machine's GEMM rate in the fast dtype at the update's own
widest shape ([batch x (horizon+1), mlp_dim] @ [mlp_dim, mlp_dim]), measured in the same run
(target: >= 0.5).
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
    replay_batch,
    run_as_script,
    sync,
    table,
)
from ldmpc.precision import resolve_precision

TDMPC2_MS_2THREADS = {1: 125.0, 5: 488.0}
SETTINGS = {
    "compile_False": ["compile=false", "precision=fp32"],
    "compile_True": ["compile=true", "precision=fp32"],
    "fast": ["compile=true", "precision=auto"],  # what `make train` runs
}


def main() -> None:
    repeats = 3 if quick() else 10
    sizes = (1,) if quick() else (1, 5)
    rows = []
    for size in sizes:
        fns = {}
        for name, switches in SETTINGS.items():
            cfg, agent = make_agent(["task=cartpole-swingup", f"model_size={size}", *switches])
            batch = replay_batch(cfg, agent.device)

            def step(agent=agent, batch=batch) -> None:
                agent.update(batch)
                sync(agent.device)

            fns[name] = step
        ms = interleaved_ms(fns, repeats=repeats, warmup=2)
        flops = counted_flops(fns["compile_False"])  # eager: the counter sees every matmul
        dtype, _ = resolve_precision("auto", agent.device.type)
        rows_mm = cfg.batch_size * (cfg.horizon + 1)
        gemm = gemm_gflops(rows_mm, cfg.mlp_dim, agent.device, dtype, repeats)
        ref = TDMPC2_MS_2THREADS[size]
        rows.append(
            {
                "model_size": size,
                "threads": torch.get_num_threads(),
                "ms_eager": ms["compile_False"],
                "ms_compile": ms["compile_True"],
                "ms_fast": ms["fast"],
                "fast_dtype": str(dtype).removeprefix("torch."),
                "tdmpc2_ref_ms": ref,
                "eager_vs_tdmpc2": ms["compile_False"] / ref,
                "fast_vs_tdmpc2": ms["fast"] / ref,
                "gflop_per_update": flops / 1e9,
                "fast_gflops": flops / (ms["fast"] * 1e6),
                "gemm_gflops": gemm,
                "fraction_of_gemm": flops / (ms["fast"] * 1e6) / gemm,
            }
        )
    print(table(rows))
    print("tdmpc2_ref_ms: TD-MPC2's code on this machine kind at 2 threads (docs/design.md §3.4)")
    print(f"rows appended to {append_rows('update_rate', rows)}")


if __name__ == "__main__":
    run_as_script(main)
