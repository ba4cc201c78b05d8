"""Suite-independent gymnasium wrappers: action repeat and the agent-step episode limit.

Every suite adapter returns a base env that takes one control step per `step()` and never
truncates on its own; these wrappers then give all suites the same TD-MPC2 episode contract.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class ActionRepeat(gym.Wrapper):
    """Apply each action `repeat` times, summing rewards; stop early if the episode ends.

    The info of the last sub-step is returned (as TD-MPC2 does), so a success flag reflects the
    state the agent observes next.
    """

    def __init__(self, env: gym.Env, repeat: int) -> None:
        if repeat < 1:
            raise ValueError(f"action repeat must be >= 1, got {repeat}")
        super().__init__(env)
        self.repeat = repeat
        if env.metadata.get("render_fps"):  # one frame per agent step in eval videos
            self.metadata = {**env.metadata, "render_fps": env.metadata["render_fps"] / repeat}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info


class EpisodeLimit(gym.Wrapper):
    """Truncate (never terminate) after `max_episode_steps` agent steps.

    Truncation, not termination, so the learner still bootstraps from the last state. Read the
    limit of a wrapped env with `env.get_wrapper_attr("max_episode_steps")`.
    """

    def __init__(self, env: gym.Env, max_episode_steps: int) -> None:
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        super().__init__(env)
        self.max_episode_steps = max_episode_steps
        self.elapsed_steps = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self.elapsed_steps = 0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.elapsed_steps += 1
        if self.elapsed_steps >= self.max_episode_steps and not terminated:
            truncated = True
        return obs, reward, terminated, truncated, info


class ClipAction(gym.ActionWrapper):
    """Clip actions into the [-1, 1] box (planners can overshoot; simulators differ in handling)."""

    def action(self, action: Any) -> np.ndarray:
        space = self.action_space
        return np.clip(np.asarray(action, dtype=space.dtype), space.low, space.high)


def standard_wrappers(env: gym.Env, action_repeat: int, episode_length: int) -> gym.Env:
    """The wrapper stack shared by every suite (innermost first)."""
    env = ClipAction(env)
    env = ActionRepeat(env, action_repeat)
    return EpisodeLimit(env, episode_length)
