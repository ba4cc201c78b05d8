"""Agent steps/s of one task per suite: state vs rgb observations, 1 env vs a vector of 8.

What a user learns: the cost of each suite (and of pixels) on this machine before planning or
learning costs anything. One agent step = `action_repeat` simulator steps, random actions, episode
ends and resets included. Both vector sizes run through `make_vector_env` (gymnasium's
SyncVectorEnv, in-process), timed in alternating chunks of the same number of env steps; medians.
The ratio `vec8_vs_1` is per-env throughput of 8 envs over 1: in one process the 8 envs still
step one after another, so it stays near 1; a vector's gain is one batched plan for all envs.
Suites whose renderer or Vulkan device is missing get a row saying why.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.common import append_rows, interleaved_ms, quick, run_as_script, table

TASKS = {  # suite -> its task here
    "dmcontrol": "cartpole-swingup",
    "metaworld": "mw-door-open",
    "maniskill2": "lift-cube",
    "myosuite": "myo-reach",
}
VECTOR = 8


def _chunk(envs: Any, actions: np.ndarray, steps: int) -> None:
    """`steps` vector steps with pre-drawn random actions (cycled)."""
    for i in range(steps):
        envs.step(actions[i % len(actions)])


def _actions(envs: Any, seed: int) -> np.ndarray:
    space = envs.action_space
    rng = np.random.default_rng(seed)
    return rng.uniform(space.low, space.high, (64, *space.shape)).astype(space.dtype)


def _env_steps_per_chunk(envs: Any, actions: np.ndarray, seconds: float) -> int:
    """Env steps a chunk needs to last ~`seconds` for one env (a multiple of VECTOR, >= 8)."""
    _chunk(envs, actions, 2)  # warm up (first render, caches)
    t0 = time.perf_counter()
    _chunk(envs, actions, 4)
    per_step = (time.perf_counter() - t0) / 4
    steps = max(VECTOR, int(seconds / per_step))
    return -(-steps // VECTOR) * VECTOR


def measure(task: str, obs: str, seconds: float, repeats: int) -> dict[str, Any]:
    """steps/s of 1 env and of a vector of 8 for one (task, obs), timed side by side."""
    from ldmpc.envs import make_vector_env

    one = make_vector_env(task, 1, seed=0, obs=obs)
    eight = make_vector_env(task, VECTOR, seed=100, obs=obs)
    try:
        one.reset(seed=0)
        eight.reset(seed=100)
        a1, a8 = _actions(one, 0), _actions(eight, 1)
        n = _env_steps_per_chunk(one, a1, seconds)
        ms = interleaved_ms(
            {
                "1": lambda: _chunk(one, a1, n),
                "8": lambda: _chunk(eight, a8, n // VECTOR),
            },
            repeats=repeats,
            warmup=1,
        )
    finally:
        one.close()
        eight.close()
    sps1, sps8 = n / ms["1"] * 1e3, n / ms["8"] * 1e3
    return {"steps_per_s_1env": sps1, "steps_per_s_vec8": sps8, "vec8_vs_1": sps8 / sps1}


def main() -> None:
    from ldmpc.envs import RGB_SUITES
    from ldmpc.envs.render import configure_mujoco_gl
    from ldmpc.errors import UserError

    seconds, repeats = (0.25, 3) if quick() else (1.0, 7)
    backend = configure_mujoco_gl()
    rows = []
    for suite, task in TASKS.items():
        state_sps = None
        for obs in ("state", "rgb"):
            row: dict[str, Any] = {"suite": suite, "task": task, "obs": obs}
            if obs == "rgb" and suite not in RGB_SUITES:
                rows.append({**row, "note": "rgb not supported for this suite"})
                continue
            try:
                row.update(measure(task, obs, seconds, repeats))
            except UserError as err:
                rows.append({**row, "note": str(err)})
                continue
            if obs == "state":
                state_sps = row["steps_per_s_1env"]
            elif state_sps:
                row["rgb_slowdown"] = state_sps / row["steps_per_s_1env"]
                row["renderer"] = "sapien" if suite == "maniskill2" else f"mujoco-{backend}"
            rows.append(row)
            print(f"{task} obs={obs}: {row['steps_per_s_1env']:.0f} steps/s", flush=True)
    print("\nagent steps/s with random actions (1 process, SyncVectorEnv, no torch work)")
    print(table(rows))
    print(f"rows appended to {append_rows('env_throughput', rows)}")


if __name__ == "__main__":
    run_as_script(main)
