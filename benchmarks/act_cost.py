"""ms per decision at TD-MPC2's planning defaults vs the `make train` budget, side by side,
and (given a trained checkpoint) the eval return each budget reaches with the same weights.

ACT_COST_CKPT=<path> picks the checkpoint; by default the learning benchmark's latest one.
"""

from __future__ import annotations

import os

import torch

from benchmarks.common import append_rows, interleaved_ms, make_agent, quick, run_as_script, table
from benchmarks.learning import make_train_planning, run_dir, target_steps


def _budget_overrides() -> list[str]:
    """The planning keys of the `make train` budget (the model keys stay the same for A and B)."""
    return make_train_planning()


def _default_checkpoint() -> str | None:
    latest = run_dir(target_steps()) / "checkpoints" / "latest.pt"
    return str(latest) if latest.exists() else None


def main() -> None:
    from ldmpc.checkpoint import load_checkpoint
    from ldmpc.evaluate import eval_seed, evaluate
    from ldmpc.planner import model_evals_per_decision

    base = ["task=cartpole-swingup", "model_size=1", "batch_size=64"]
    budgets = {"tdmpc2_default": base, "make_train": [*base, *_budget_overrides()]}
    agents = {name: make_agent(args) for name, args in budgets.items()}
    ckpt_path = os.environ.get("ACT_COST_CKPT") or _default_checkpoint()
    step = ""
    if ckpt_path:
        ckpt = load_checkpoint(ckpt_path)
        step = ckpt["counters"].get("env_steps", "")
        for _, agent in agents.values():
            agent.load_state_dict(ckpt["payload"]["agent"])
    obs = torch.randn(1, *agents["make_train"][0].obs_shape)
    calls = {
        n: (lambda a=a: a.act(obs, None, None, eval_mode=True)) for n, (_, a) in agents.items()
    }
    ms = interleaved_ms(calls, repeats=5 if quick() else 20)
    episodes = 2 if quick() else 4
    rows = []
    for name, (cfg, agent) in agents.items():
        row = {
            "budget": name,
            "threads": torch.get_num_threads(),
            "ms_per_decision": ms[name],
            "model_evals": model_evals_per_decision(cfg)["dynamics"],
            "speedup_vs_default": ms["tdmpc2_default"] / ms[name],
        }
        if ckpt_path:
            result = evaluate(agent, cfg, episodes, seed=eval_seed(cfg))
            row.update(checkpoint_step=step, eval_return=result["episode_reward"])
        rows.append(row)
    print(table(rows))
    if not ckpt_path:
        print("no checkpoint: returns not measured (run `make bench B=learning` first)")
    print(f"rows appended to {append_rows('act_cost', rows)}")


if __name__ == "__main__":
    run_as_script(main)
