"""DMControl adapter: a dm_control task as a gymnasium env with a flat float32 state.

One `step()` is one dm_control control step; action repeat and the 500-step episode limit are
added by `ldmpc.envs.wrappers`. dm_control's own time limit is disabled (infinite), so episodes
end only by that limit (truncation) or by a task's own termination (only lqr has one).
Note: dm_control's quadruped-escape re-uploads its random terrain to a GL context at every
reset, so that one task needs working offscreen rendering even for state observations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from dm_control import suite
from dm_control.rl import control

from ldmpc.envs.custom import CUSTOM_TASKS
from ldmpc.errors import UserError

# Action bounds beyond this are "unbounded" (lqr uses +/-1e10): pass [-1, 1] through unscaled.
_UNBOUNDED = 1e6
_CAMERA = {"quadruped": 2}  # dm_control's default camera 0 shows little of these bodies


def load(domain: str, task: str, seed: int) -> control.Environment:
    """Build the dm_control env with its task randomness seeded from `seed` and no time limit."""
    if not 0 <= seed < 2**32:
        raise UserError(f"seed must be in [0, 2**32) for dmcontrol, got {seed}")
    random = np.random.RandomState(seed)
    if (domain, task) in CUSTOM_TASKS:
        return CUSTOM_TASKS[domain, task](task, random, float("inf"))
    return suite.load(domain, task, task_kwargs={"random": random, "time_limit": float("inf")})


class DMControlEnv(gym.Env):
    """Gymnasium view of one dm_control task.

    Seeding: the task's RandomState comes from the seed. `reset(seed=s)` rebuilds the dm_control
    env from scratch (a few ms; ~1 s for dog) so the trajectory cannot depend on earlier episodes;
    `reset()` without a seed continues the current random stream.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(self, domain: str, task: str, seed: int, render_size: int = 384) -> None:
        self.domain, self.task = domain, task
        self.render_mode = "rgb_array"
        self.render_size = render_size
        self._seed = seed
        self._env = load(domain, task, seed)
        self._fresh = True  # built with self._seed and never reset: reset(seed=same) can reuse it
        # frames per second of one control step; ActionRepeat divides it by the repeat
        self.metadata = {**self.metadata, "render_fps": 1.0 / self._env.control_timestep()}
        self._keys = list(self._env.observation_spec())
        size = sum(int(np.prod(spec.shape)) for spec in self._env.observation_spec().values())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        spec = self._env.action_spec()
        low = np.broadcast_to(spec.minimum, spec.shape).astype(np.float64)
        high = np.broadcast_to(spec.maximum, spec.shape).astype(np.float64)
        bounded = (np.abs(low) < _UNBOUNDED) & (np.abs(high) < _UNBOUNDED)
        # physical = center + half_range * a; identity on unbounded dimensions.
        self._center = np.where(bounded, (high + low) / 2, 0.0)
        self._half_range = np.where(bounded, (high - low) / 2, 1.0)
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, np.float32)

    def _flatten(self, observation: Mapping[str, Any]) -> np.ndarray:
        parts = [np.asarray(observation[key], dtype=np.float32).ravel() for key in self._keys]
        return np.concatenate(parts)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None and not (self._fresh and seed == self._seed):
            self._env.close()
            self._env, self._seed = load(self.domain, self.task, seed), seed
        self._fresh = False
        time_step = self._env.reset()
        return self._flatten(time_step.observation), {"success": 0.0}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        time_step = self._env.step(self._center + self._half_range * a)
        terminated = bool(time_step.last() and time_step.discount == 0.0)
        truncated = bool(time_step.last() and not terminated)
        reward = float(time_step.reward or 0.0)
        return self._flatten(time_step.observation), reward, terminated, truncated, {"success": 0.0}

    def render(self, size: int | None = None, shadows: bool = True) -> np.ndarray:
        """An RGB frame (uint8, size x size, default `render_size`) from the domain's camera.

        dm_control's own renderer, not a cached `mujoco.Renderer`: tasks that change the model's
        assets at reset (quadruped-escape's terrain) upload them to dm_control's GL context.
        """
        size = size or self.render_size
        camera = _CAMERA.get(self.domain, 0)
        flags = {"shadow": shadows}
        return self._env.physics.render(size, size, camera_id=camera, render_flag_overrides=flags)

    def close(self) -> None:
        self._env.close()

    @property
    def physics(self) -> Any:
        """The MuJoCo physics (for tests, debugging and custom rendering)."""
        return self._env.physics


def make_dmcontrol_env(env_kwargs: Mapping[str, Any], seed: int) -> DMControlEnv:
    """Base env of a registered dmcontrol task (its TaskSpec.env_kwargs)."""
    return DMControlEnv(env_kwargs["domain"], env_kwargs["task"], seed)
