"""The seeded rollout the suite tests compare (imported by test_<suite>.py; not a test file)."""

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
