"""Planning latency with the diffusion switches: ms per planning call for 16 envs, dynamics mlp
vs diffusion at 1, 2, 3 sampler steps, with and without diffusion proposals, timed alternately
in one run (medians). Each row's ratio is to the mlp baseline of the same run.

Target (issue 7): dynamics=diffusion at 1 step <= 2x mlp. Planning budget: the `make train`
one (iterations/num_samples/... from the Makefile's TRAIN_ARGS), so the numbers match what a CPU
run pays per decision; TD-MPC2's full budget with FULL=1.
"""

from __future__ import annotations

import os
from typing import Any

import torch

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
from benchmarks.learning import make_train_budget, make_train_planning

ENVS = 16
VARIANTS = {
    "mlp": [],
    "mlp+proposals": ["proposal=both"],
    "diffusion-1": ["dynamics=diffusion", "diffusion_steps=1"],
    "diffusion-2": ["dynamics=diffusion", "diffusion_steps=2"],
    "diffusion-3": ["dynamics=diffusion", "diffusion_steps=3"],
    "diffusion-1+proposals": ["dynamics=diffusion", "diffusion_steps=1", "proposal=both"],
}


def budget() -> list[str]:
    """Planning keys of the chosen budget (the task and model size of `make train`)."""
    if os.environ.get("FULL") == "1":
        return ["task=cartpole-swingup", "model_size=1"]
    model = [a for a in make_train_budget() if a.startswith(("task=", "model_size="))]
    return [*model, *make_train_planning()]


def main() -> None:
    repeats = 3 if quick() else 10
    agents = {name: make_agent([*budget(), *extra]) for name, extra in VARIANTS.items()}
    cfg0, agent0 = agents["mlp"]
    obs = random_obs(cfg0, ENVS, agent0.device)

    def call(agent: Any) -> Any:
        return lambda: (agent.act(obs, None, None, eval_mode=False), sync(agent.device))

    ms = interleaved_ms({n: call(a) for n, (_, a) in agents.items()}, repeats=repeats, warmup=1)
    from ldmpc.planner import model_evals_per_decision

    rows = []
    for name, (cfg, agent) in agents.items():
        evals = model_evals_per_decision(cfg)
        rows.append({
            "variant": name,
            "device": agent.device.type,
            "threads": torch.get_num_threads(),
            "envs": ENVS,
            "ms_per_call": ms[name],
            "ratio_to_mlp": ms[name] / ms["mlp"],
            "dynamics_evals_per_env": evals["dynamics"],
            "proposal_tokens_per_env": evals["proposal"],
        })  # fmt: skip
    print(f"planning budget: {' '.join(budget())}")
    print(table(rows))
    print(f"rows appended to {append_rows('plan_latency', rows)}")


if __name__ == "__main__":
    run_as_script(main)
