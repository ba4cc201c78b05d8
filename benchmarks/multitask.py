"""mt3: one multitask agent on three DMC tasks vs three single-task agents, same steps per task.

`python -m benchmarks multitask` (env: MT_TASKS=cartpole-swingup,cup-catch,pendulum-swingup
MT_STEPS=20000 agent steps per task, MT_SEED=1, MT_PARTS=single,multitask; QUICK=1: 1000).
- multitask: `ldmpc train task=<t1,t2,t3>` at the `make train` budget with num_envs=3, so each
  sub-env keeps one task (round-robin with stride 3) and the run takes MT_STEPS per task
  (3 x MT_STEPS in all).
- single: `diffusion_ab`'s baseline runs (same budget, seed and run directories, so either
  benchmark continues the other's runs), read at MT_STEPS.
Both are resumable: a second invocation continues where the first stopped.
Printed and written (multitask.csv, mt3_table.md): per task the normalized score of both at the
budget (return / 10, TD-MPC2's DMControl score), the ratio of mean scores (multitask / single)
and of wall times (the multitask run / the three single runs together, up to the budget).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchmarks.common import append_rows, env_int, env_list, quick, table
from benchmarks.diffusion_ab import ROOT, ab_steps, eval_rows, run_args, train

DEFAULT_TASKS = "cartpole-swingup,cup-catch,pendulum-swingup"


def settings() -> tuple[list[str], int, int, list[str]]:
    tasks = env_list("MT_TASKS", DEFAULT_TASKS)
    steps = env_int("MT_STEPS", 1000 if quick() else 20_000)
    seed = env_int("MT_SEED", 1)
    parts = os.environ.get("MT_PARTS", "single,multitask").split(",")
    return tasks, steps, seed, parts


def multitask_args(tasks: list[str], steps: int, seed: int) -> list[str]:
    """The multitask run: the baseline's arguments with the task list, one sub-env per task."""
    base = run_args(tasks[0], "baseline", seed, steps * len(tasks))
    keep = [a for a in base if not a.startswith(("task=", "exp_name=", "num_envs="))]
    return [*keep, f"task={','.join(tasks)}", f"num_envs={len(tasks)}", f"exp_name=mt{steps}"]


def single_args(task: str, steps: int, seed: int) -> list[str]:
    """diffusion_ab's baseline run of `task` (at least `steps` long)."""
    return run_args(task, "baseline", seed, max(steps, ab_steps()))


def at_step(rows: list[dict[str, float]], step: int) -> dict[str, float]:
    """The last eval row at or before `step` ({} when none)."""
    done = [r for r in rows if r["step"] <= step]
    return done[-1] if done else {}


def compare(tasks: list[str], steps: int, seed: int) -> list[dict[str, Any]]:
    """Per-task rows plus a 'mean' row with the score and wall-time ratios."""
    mt_rows = eval_rows(_rdir(multitask_args(tasks, steps, seed)))
    mt = at_step(mt_rows, steps * len(tasks))
    rows, single_wall = [], 0.0
    for task in tasks:
        single = at_step(eval_rows(_rdir(single_args(task, steps, seed))), steps)
        single_wall += single.get("elapsed_s", float("nan"))
        rows.append({
            "task": task,
            "single_step": int(single.get("step", 0)),
            "single_score": single.get("episode_reward", float("nan")) / 10,
            "mt_step": int(mt.get("step", 0)),
            "mt_score": mt.get(f"score/{task}", float("nan")),
        })  # fmt: skip
    mean_single = sum(r["single_score"] for r in rows) / len(rows)
    mean_mt = sum(r["mt_score"] for r in rows) / len(rows)
    rows.append({
        "task": "mean", "single_score": mean_single, "mt_score": mean_mt,
        "score_ratio_mt_over_single": mean_mt / mean_single if mean_single else float("nan"),
        "wall_ratio_mt_over_singles": mt.get("elapsed_s", float("nan")) / single_wall,
    })  # fmt: skip
    return rows


def _rdir(args: list[str]) -> Path:
    from benchmarks.diffusion_ab import run_dir

    return run_dir(args)


def main() -> None:
    tasks, steps, seed, parts = settings()
    if "single" in parts:
        for task in tasks:
            train(single_args(task, steps, seed))
    if "multitask" in parts:
        train(multitask_args(tasks, steps, seed))
    rows = compare(tasks, steps, seed)
    print(table(rows))
    ROOT.mkdir(parents=True, exist_ok=True)
    append_rows("multitask", rows)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(f"{r.get(k, '')}" for k in rows[0]) + " |" for r in rows]
    lines.append("")
    lines.append(" ".join(f"{k}={v:.3g}" for k, v in rows[-1].items() if "ratio" in k))
    (ROOT / "mt3_table.md").write_text("\n".join(lines) + "\n")
