"""ms per agent step of the diffusion A/B's variants at TD-MPC2's defaults, side by side.

One agent step of a single-task run is one decision for one env plus one gradient update
(TD-MPC2's update-to-data ratio of 1). This times that pair for `baseline`, `diffusion`,
`proposals` and `both` (benchmarks/diffusion_ab.py's switches) at TD-MPC2's defaults
(model_size 5, batch 256, MPPI 512 samples x 6 iterations), alternately in one run (medians), and
prints each variant's ratio to the baseline and what the issue's full A/B table (5 tasks x the 4
variants x 100k steps, one seed) costs at these rates, in device-hours. That figure is why the
table needs a long GPU lease rather than a 15-minute one. QUICK=1: model_size 1, 3 repeats.
"""

from __future__ import annotations

from typing import Any

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
from benchmarks.diffusion_ab import VARIANTS

FULL_TABLE_TASKS, FULL_TABLE_STEPS = 5, 100_000  # issue 7's GPU table


def main() -> None:
    size = 1 if quick() else 5
    agents = {
        name: make_agent(["task=cartpole-swingup", f"model_size={size}", *extra])
        for name, extra in VARIANTS.items()
    }

    def step(cfg: Any, agent: Any) -> Any:
        obs = torch.randn(1, *cfg.obs_shape, device=agent.device)
        batch = replay_batch(cfg, agent.device)

        def run() -> None:
            agent.act(obs, None, None, eval_mode=False)
            agent.update(batch)
            sync(agent.device)

        return run

    ms = interleaved_ms(
        {name: step(cfg, agent) for name, (cfg, agent) in agents.items()},
        repeats=3 if quick() else 10,
        warmup=2,
    )
    rows = []
    for name, (_, agent) in agents.items():
        hours = ms[name] * FULL_TABLE_TASKS * FULL_TABLE_STEPS / 3.6e6
        rows.append({
            "variant": name,
            "device": agent.device.type,
            "model_size": size,
            "ms_per_agent_step": ms[name],
            "ratio_to_baseline": ms[name] / ms["baseline"],
            "hours_5_tasks_100k": hours,
        })  # fmt: skip
    print(table(rows))
    total = sum(r["hours_5_tasks_100k"] for r in rows)
    print(f"full A/B table (5 tasks x {len(rows)} variants x 100k steps, 1 seed): {total:.1f} h")
    print(f"rows appended to {append_rows('step_cost', rows)}")


if __name__ == "__main__":
    run_as_script(main)
