"""Does bf16 learn what fp32 learns? The same data, weights and batches, offline and deterministic.

Two agents start from the same initial weights (`Agent` seeds them from `seed`) and take the
same PL_UPDATES updates on the same replay batches (the replays share their seed), one with
precision=fp32 and compile=false (the reference), one with the fast settings (PL_FAST, default
`precision=bf16 compile=true`); a third fp32 agent from seed 2 (other weights, other batches)
shows how far two fp32 runs lie apart anyway. Then every model's consistency, reward and value
losses are computed in fp32 on the same held-out batches, drawn from episodes none trained on.
The issue's check: each fast loss within 10 % of the reference's.

Data: PL_DATA=<a run's replay folder> (e.g. runs/cartpole-swingup/1/default/replay: what a
real run saw), else PL_EPISODES episodes of random actions on PL_TASK (the seed phase's data;
nothing to download). The last fifth of the episodes is held out.
Knobs: PL_TASK (cartpole-swingup), PL_UPDATES (2000; QUICK=1: 300), PL_EPISODES (20),
PL_HELDOUT_BATCHES (20), PL_FAST. The model and batch are the `make train` budget's; one thread.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from benchmarks.common import append_rows, env_int, quick, run_as_script, table

BUDGET = ["model_size=1", "batch_size=64", "torch_threads=1", "progress=false"]
LOSSES = ("consistency_loss", "reward_loss", "value_loss")
TOLERANCE = 0.10
DATA_SEED = 1  # the random-action data's seed (the agents' seeds vary)


def random_episodes(cfg: Any, episodes: int) -> list[dict[str, np.ndarray]]:
    """Whole episodes of uniform random actions (the seed phase's data); the same data for
    every agent, whatever its seed."""
    from ldmpc.envs import make_env

    env = make_env(cfg.task, DATA_SEED)
    rng = np.random.default_rng(DATA_SEED)
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=DATA_SEED + i)
        ep: dict[str, list[Any]] = {"obs": [obs], "action": [], "reward": [], "terminated": []}
        done = False
        while not done:
            action = rng.uniform(-1, 1, cfg.action_dim).astype(np.float32)
            obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in zip(ep, (obs, action, reward, terminated), strict=True):
                ep[key].append(value)
            done = terminated or truncated
        out.append({k: np.asarray(v) for k, v in ep.items()})
    env.close()
    return out


def split_replays(cfg: Any) -> tuple[Any, Any, str]:
    """(train replay, held-out replay, where the data came from)."""
    from ldmpc.replay import EpisodeReplay, replay_args

    source = os.environ.get("PL_DATA")
    if source:
        full = EpisodeReplay(**{**replay_args(cfg), "capacity": 10**8})
        full.load(source)
        episodes = list(full.episodes())
    else:
        episodes = random_episodes(cfg, env_int("PL_EPISODES", 20))
        source = f"{len(episodes)} random-action episodes"
    cut = max(1, len(episodes) * 4 // 5)
    train, held = (EpisodeReplay(**{**replay_args(cfg), "capacity": 10**8}) for _ in range(2))
    train.add(episodes[:cut])
    held.add(episodes[cut:])
    return train, held, source


@torch.no_grad()
def heldout_losses(agent: Any, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean held-out losses of the agent's model, in fp32, Q dropout off."""
    from ldmpc.losses import world_model_loss

    agent.model.eval()
    sums = dict.fromkeys(LOSSES, 0.0)
    for batch in batches:
        _, metrics, _ = world_model_loss(agent.model, batch, agent.cfg)
        for key in LOSSES:
            sums[key] += float(metrics[key]) / len(batches)
    return sums


def train(overrides: list[str], updates: int) -> tuple[Any, float, str]:
    """An agent after `updates` updates on the shared data; its ms per update; the data."""
    from ldmpc.agent import Agent
    from ldmpc.config import load

    cfg = load([f"task={os.environ.get('PL_TASK', 'cartpole-swingup')}", *BUDGET, *overrides])
    torch.manual_seed(cfg.seed)  # the update's own draws (policy noise, dropout)
    replay, _, source = split_replays(cfg)
    agent = Agent(cfg)
    warmup = max(1, updates // 10)  # compilation happens in the first calls: not timed
    for i in range(updates):
        if i == warmup:
            t0 = time.perf_counter()
        agent.update(replay.sample(cfg.batch_size, device="cpu"))
    ms = (time.perf_counter() - t0) * 1e3 / (updates - warmup)
    return agent, ms, source


def main() -> None:
    torch.set_num_threads(1)
    updates = max(2, env_int("PL_UPDATES", 300 if quick() else 2000))
    fast = os.environ.get("PL_FAST", "precision=bf16 compile=true").split()
    reference = ["precision=fp32", "compile=false"]
    variants = {
        "fp32 eager": reference,
        # the same settings from another seed (initial weights, batches): how far two fp32
        # runs' held-out losses lie apart anyway
        "fp32 eager, seed 2": [*reference, "seed=2"],
        " ".join(fast): fast,
    }
    agents, ms = {}, {}
    for name, overrides in variants.items():
        agents[name], ms[name], source = train(overrides, updates)
    cfg = next(iter(agents.values())).cfg
    _, held, _ = split_replays(cfg)
    batches = [
        held.sample(cfg.batch_size, device="cpu") for _ in range(env_int("PL_HELDOUT_BATCHES", 20))
    ]
    ref_name = next(iter(variants))
    losses = {name: heldout_losses(agent, batches) for name, agent in agents.items()}
    rows = []
    for name in variants:
        row: dict[str, Any] = {"variant": name, "updates": updates, "ms_per_update": ms[name]}
        for key in LOSSES:
            row[key] = losses[name][key]
            row[f"{key}_vs_fp32"] = losses[name][key] / losses[ref_name][key]
        rows.append(row)
    print(f"data: {source}; held-out losses after {updates} updates (fp32 forward, same batches)")
    print(table(rows))
    for key in LOSSES:
        fast_diff = rows[-1][f"{key}_vs_fp32"] - 1
        seed_diff = rows[1][f"{key}_vs_fp32"] - 1
        verdict = "within" if abs(fast_diff) <= TOLERANCE else "OUTSIDE"
        print(
            f"{key}: {rows[-1]['variant']} {fast_diff:+.1%} vs fp32 ({verdict} "
            f"{TOLERANCE:.0%}); fp32 from another seed {seed_diff:+.1%}"
        )
    append_rows("precision_learning", [{**r, "data": source} for r in rows])


if __name__ == "__main__":
    run_as_script(main)
