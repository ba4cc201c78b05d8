"""Return reached with small planning budgets vs TD-MPC2's full MPPI, one trained agent.

`python -m benchmarks plan_budget` loads the newest checkpoint of the diffusion A/B's
`proposals` run (train it first: `AB_VARIANTS=proposals python -m benchmarks diffusion_ab`),
or `PB_CHECKPOINT=<file> PB_ARGS="task=... dynamics=..."` for another one trained with
diffusion proposals. Every budget plans with the same weights, on the same eval seeds:

- full:    TD-MPC2's MPPI budget, 512 samples x 6 iterations (24 policy trajectories; the
           agent was trained with proposals, so 32 of the 512 candidates are proposals)
- train:   the `make train` budget (128 x 2, 32 of them proposals)
- ssr-N:   sample N diffusion proposals (+ the policy trajectories), score once, take the best
- mppi1-P: one MPPI iteration over 64 candidates seeded by 32 proposals

It prints eval return, world-model evaluations per decision (`model_evals_per_decision`) and ms
per decision (timed alternately, medians), and the ratios to `full`. The issue's target: the
baseline's return with >= 5x fewer model evaluations. So when the A/B's `baseline` run (same
task, seed and budget, no proposals) has a checkpoint at the same step, two more rows:
`baseline-full`, plays that agent with the full MPPI budget on the same seeds, and every row gets
`return_vs_baseline` (to that row); `baseline-train` plays it with the `make train` budget it was
trained with. The step is the newest one both runs checkpointed (PB_STEP picks another);
PB_EPISODES eval episodes per budget (default 10); PB_TASK and PB_SEED pick the A/B runs
(default cartpole-swingup, seed 1).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    append_rows,
    env_int,
    interleaved_ms,
    quick,
    random_obs,
    run_as_script,
    sync,
    table,
)
from benchmarks.diffusion_ab import ROOT, ab_steps, run_args, run_dir

BUDGETS = {
    "full": ["iterations=6", "num_samples=512", "num_elites=64", "num_pi_trajs=24"],
    "train": ["iterations=2", "num_samples=128", "num_elites=16", "num_pi_trajs=8"],
    "ssr-32": ["planner=ssr", "num_diffusion_proposals=32", "num_pi_trajs=8", "num_elites=8"],
    "ssr-128": ["planner=ssr", "num_diffusion_proposals=128", "num_pi_trajs=8", "num_elites=8"],
    "mppi1-32": ["iterations=1", "num_samples=64", "num_diffusion_proposals=32", "num_pi_trajs=8",
                 "num_elites=8"],
}  # fmt: skip


def _steps(run: Path) -> set[int]:
    return {int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("step_*.pt")}


def checkpoint_and_args() -> tuple[Path, list[str], Path | None, list[str]]:
    """(proposals checkpoint, its args, the baseline's checkpoint at the same step or None, its
    args)."""
    if os.environ.get("PB_CHECKPOINT"):
        return (
            Path(os.environ["PB_CHECKPOINT"]),
            shlex.split(os.environ.get("PB_ARGS", "")),
            None,
            [],
        )
    task = os.environ.get("PB_TASK", "cartpole-swingup")
    steps, seed = ab_steps(), env_int("PB_SEED", 1)
    args = run_args(task, "proposals", seed, steps)
    base_args = run_args(task, "baseline", seed, steps)
    run, base_run = run_dir(args), run_dir(base_args)
    common = _steps(run) & _steps(base_run)
    step = env_int("PB_STEP", max(common, default=0))
    if step not in common:
        return run / "checkpoints" / "latest.pt", args, None, base_args
    name = f"step_{step}.pt"
    return run / "checkpoints" / name, args, base_run / "checkpoints" / name, base_args


def _decision(agent: Any, obs: torch.Tensor) -> Any:
    return lambda: (agent.act(obs, eval_mode=True), sync(agent.device))


def main() -> None:
    from ldmpc.config import load
    from ldmpc.evaluate import eval_seed, evaluate, load_agent
    from ldmpc.planner import model_evals_per_decision

    ckpt, base, baseline_ckpt, baseline_args = checkpoint_and_args()
    if not ckpt.exists():
        print(f"no checkpoint {ckpt} (under {ROOT}): train the proposals variant first")
        return
    episodes = env_int("PB_EPISODES", 2 if quick() else 10)
    agents: dict[str, tuple[Any, Any]] = {}
    for name, extra in BUDGETS.items():
        cfg = load([*base, "proposal=both", *extra, f"checkpoint={ckpt}", "progress=false"])
        agents[name] = (cfg, load_agent(cfg)[0])
    if baseline_ckpt is not None:
        for budget in ("full", "train"):
            extra = [*BUDGETS[budget], f"checkpoint={baseline_ckpt}", "progress=false"]
            cfg = load([*baseline_args, *extra])
            agents[f"baseline-{budget}"] = (cfg, load_agent(cfg)[0])
    cfg0, agent0 = agents["full"]
    obs = random_obs(cfg0, 1, agent0.device)
    ms = interleaved_ms(
        {n: _decision(a, obs) for n, (_, a) in agents.items()},
        repeats=3 if quick() else 10,
        warmup=1,
    )
    rows = []
    for name, (cfg, agent) in agents.items():
        result = evaluate(agent, cfg, episodes, seed=eval_seed(cfg))
        rows.append({
            "budget": name,
            "return": result["episode_reward"],
            "return_std": result["episode_reward_std"],
            "model_evals": model_evals_per_decision(cfg)["dynamics"],
            "ms_per_decision": ms[name],
            "threads": torch.get_num_threads(),
        })  # fmt: skip
    full = rows[0]
    baseline = next((r for r in rows if r["budget"] == "baseline-full"), None)
    for row in rows:
        row["evals_vs_full"] = row["model_evals"] / full["model_evals"]
        row["ms_vs_full"] = row["ms_per_decision"] / full["ms_per_decision"]
        if baseline is not None:
            row["return_vs_baseline"] = row["return"] / baseline["return"]
    print(f"checkpoint: {ckpt}; {episodes} eval episodes per budget")
    if baseline is None:
        print("no baseline checkpoint at the same step: no return_vs_baseline column")
    else:
        print(f"baseline-full: {baseline_ckpt}")
    print(table(rows))
    print(f"rows appended to {append_rows('plan_budget', rows)}")


if __name__ == "__main__":
    run_as_script(main)
