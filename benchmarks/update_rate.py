"""ms per gradient update at model_size 1 and 5, batch 256, compile off vs on (same run).

The reference is TD-MPC2's own code measured on this machine kind (docs/design.md §3.4, 2 threads):
125 ms (size 1) and 488 ms (size 5). Target: <= 0.75x of those.
"""

from __future__ import annotations

import torch

from benchmarks.common import (
    append_rows,
    interleaved_ms,
    make_agent,
    quick,
    replay_batch,
    run_as_script,
    sync,
    table,
)

TDMPC2_MS_2THREADS = {1: 125.0, 5: 488.0}


def main() -> None:
    repeats = 3 if quick() else 10
    sizes = (1,) if quick() else (1, 5)
    rows = []
    for size in sizes:
        fns = {}
        for compile_on in (False, True):
            cfg, agent = make_agent(
                [
                    "task=cartpole-swingup",
                    f"model_size={size}",
                    f"compile={str(compile_on).lower()}",
                ]
            )
            batch = replay_batch(cfg, agent.device)

            def step(agent=agent, batch=batch) -> None:
                agent.update(batch)
                sync(agent.device)

            fns[f"compile_{compile_on}"] = step
        ms = interleaved_ms(fns, repeats=repeats, warmup=2)
        ref = TDMPC2_MS_2THREADS[size]
        rows.append(
            {
                "model_size": size,
                "threads": torch.get_num_threads(),
                "ms_eager": ms["compile_False"],
                "ms_compile": ms["compile_True"],
                "compile_speedup": ms["compile_False"] / ms["compile_True"],
                "tdmpc2_ref_ms": ref,
                "eager_vs_tdmpc2": ms["compile_False"] / ref,
            }
        )
    print(table(rows))
    print("tdmpc2_ref_ms: TD-MPC2's code on this machine kind at 2 threads (docs/design.md §3.4)")
    print(f"rows appended to {append_rows('update_rate', rows)}")


if __name__ == "__main__":
    run_as_script(main)
