"""The seeded rollout and the seeding contract the suite tests share (imported by
test_<suite>.py; not a test file)."""

from __future__ import annotations

from typing import Any

import numpy as np


def rollout(env: Any, seed: int | None, steps: int, action_seed: int = 0) -> np.ndarray:
    """Observations, rewards and success flags of one rollout with a fixed action sequence, as
    one array (equal arrays = bit-identical trajectories)."""
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(action_seed)
    out = [obs]
    for _ in range(steps):
        obs, reward, _, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        out += [obs, np.array([reward, info["success"]], np.float32)]
    return np.concatenate(out)


def check_seeding(task: str, steps: int, history: int, fresh: int = 5) -> None:
    """The seeding contract of every suite's env, as a researcher comparing seeds relies on:
    the same seed replays the same trajectory whatever the env did before; the constructor's
    seed is that of the first unseeded reset; unseeded resets continue the env's own stream
    (a new episode, identical in two envs that were reset with the same seed)."""
    from ldmpc.envs import make_env  # late: a suite's test may set its environment up first

    a, b = make_env(task, seed=0), make_env(task, seed=123)
    n = a.observation_space.shape[0]
    first = rollout(a, seed=7, steps=steps)
    rollout(b, seed=None, steps=history)  # b has history: another seed, another episode
    np.testing.assert_array_equal(first, rollout(b, seed=7, steps=steps))
    np.testing.assert_array_equal(make_env(task, seed=7).reset()[0], first[:n])
    second = rollout(a, seed=None, steps=fresh)
    np.testing.assert_array_equal(second, rollout(b, seed=None, steps=fresh))
    assert not np.array_equal(second[:n], first[:n])
