"""The seeded rollout and the env contracts (seeding, reset/step) that the suite tests share
(imported by test_<suite>.py; not a test file)."""

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


def check_reset_and_step(
    env: Any, episode_steps: int, repeat: int, success_values: tuple[float, ...] = (0.0, 1.0)
) -> np.ndarray:
    """The env contract the agent and replay rely on, the same for every suite: actions in a
    float32 box [-1, 1], TD-MPC2's episode length and action repeat, flat float32 observations,
    finite rewards, no termination, and a float `success` that starts at 0. Closes the env and
    returns the first observation for a suite's own checks."""
    space = env.action_space
    assert space.dtype == np.float32 and np.all(space.low == -1) and np.all(space.high == 1)
    assert env.get_wrapper_attr("max_episode_steps") == episode_steps
    assert env.get_wrapper_attr("repeat") == repeat
    first, info = env.reset()
    assert first.dtype == np.float32
    assert first.shape == env.observation_space.shape == (first.size,)
    assert type(info["success"]) is float and info["success"] == 0.0
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(space.sample())
        assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
        assert np.isfinite(obs).all() and type(reward) is float and np.isfinite(reward)
        assert not terminated and not truncated
        assert type(info["success"]) is float and info["success"] in success_values
    env.close()
    return first
