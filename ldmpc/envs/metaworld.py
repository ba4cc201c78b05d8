"""Meta-World adapter: one Meta-World v3 task as a gymnasium env with a flat float32 state.

TD-MPC2's setting, on metaworld 3.0: the goal-observable variant (39-dim state that includes the
goal position) with a new object/goal placement drawn at every reset, actions in [-1, 1]^4, and
`success` (0/1) from Meta-World's own info. One `step()` is one Meta-World step (5 MuJoCo
substeps); action repeat 2 and the 100-agent-step episode come from `ldmpc.envs.wrappers`.

Meta-World quirks handled here:
- Its env raises ValueError once `max_path_length` (500) steps pass without a reset and flags
  truncation at 500; the limit is lifted so only our wrappers end episodes.
- Unseeded placements come from the *global* `np.random`; `seeded_rand_vec` switches them to the
  env's own generator, so every env is reproducible from its seed, independent of other envs.
- TD-MPC2 steps once with a zero action after each reset and still returns the reset
  observation; that makes the first observation stale, so it is not copied here.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

from ldmpc.envs.render import FrameRenderer
from ldmpc.errors import UserError

# TD-MPC2 renders from "corner2" moved to this position (a closer view of the table).
CAMERA = "corner2"
CAMERA_POS = (0.75, 0.075, 0.7)
_NO_PATH_LIMIT = 2**62  # Meta-World's step counter never reaches this


def _check_seed(seed: int) -> None:
    # The env constructor seeds the global np.random with it, which needs [0, 2**32).
    if not 0 <= seed < 2**32:
        raise UserError(f"seed must be in [0, 2**32) for metaworld, got {seed}")


class MetaWorldEnv(gym.Env):
    """Gymnasium view of one Meta-World v3 task (goal observable, random placement per reset).

    Seeding: placements come from a generator seeded by the constructor's seed; `reset(seed=s)`
    reseeds it (Meta-World resets the whole MuJoCo state, so nothing else carries over), and
    `reset()` without a seed continues the stream.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(self, env_name: str, seed: int, render_size: int = 384) -> None:
        _check_seed(seed)
        key = f"{env_name}-goal-observable"
        if key not in ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE:
            raise UserError(f"unknown Meta-World environment '{env_name}'")
        self.env_name = env_name
        self.render_mode = "rgb_array"
        self.render_size = render_size
        self._env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[key](seed=seed)
        self._env._freeze_rand_vec = False  # a new placement at every reset (as TD-MPC2)
        self._env.seeded_rand_vec = True  # ...drawn from the env's seeded generator
        self._env.max_path_length = _NO_PATH_LIMIT
        model = self._env.model
        model.cam_pos[mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, CAMERA)] = CAMERA_POS
        self._frames = FrameRenderer()
        self.metadata = {**self.metadata, "render_fps": 1.0 / self._env.dt}
        size = self._env.observation_space.shape[0]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, self._env.action_space.shape, np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            _check_seed(seed)
            self._env.seed(seed)
        obs, _ = self._env.reset()
        return obs.astype(np.float32), {"success": 0.0}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        obs, reward, _, _, info = self._env.step(a)
        info = {"success": float(info["success"])}
        return obs.astype(np.float32), float(reward), False, False, info

    def render(self, size: int | None = None, shadows: bool = True) -> np.ndarray:
        """An RGB frame (uint8, size x size, default `render_size`) from TD-MPC2's camera.

        MuJoCo returns this camera's view upside down; flipping it gives the frames
        TD-MPC2 saw (mujoco-py returned images bottom row first).
        """
        size = size or self.render_size
        frame = self._frames.render(self._env.model, self._env.data, size, CAMERA, shadows)
        return np.ascontiguousarray(frame[::-1])

    def close(self) -> None:
        self._frames.close()
        self._env.close()

    @property
    def sim(self) -> Any:
        """The underlying Meta-World env (for tests and debugging)."""
        return self._env


def make_metaworld_env(env_kwargs: Any, seed: int) -> MetaWorldEnv:
    """Base env of a registered metaworld task (its TaskSpec.env_kwargs)."""
    return MetaWorldEnv(env_kwargs["env_name"], seed)
