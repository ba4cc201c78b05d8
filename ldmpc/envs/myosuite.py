"""MyoSuite adapter: one MyoSuite hand task as a gymnasium env with a flat float32 state.

myosuite 2.12 registers its envs with gymnasium (it picks gymnasium when installed), so
`gymnasium.make(env_id)` builds them; the registry's wrappers are dropped (`.unwrapped`)
because their time limits (50 to 200 steps) differ from TD-MPC2's 100-step episodes, which
`ldmpc.envs.wrappers` adds (action repeat 1). As in TD-MPC2:
- `success` is MyoSuite's `solved` flag of the current step (0/1);
- MyoSuite's `done` (hand too far from the target, object dropped) is ignored: episodes always
  run their full length, so the learning curves compare with TD-MPC2's.

MyoSuite prints a banner on import and citation credits for the first env, on stdout; both are
filtered out (anything else it prints passes through) so they do not land in every run's log.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import warnings
from collections.abc import Iterator
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from ldmpc.envs.render import FrameRenderer
from ldmpc.errors import UserError

CAMERA = "hand_side_inter"  # TD-MPC2's camera for MyoSuite
_BANNER = "MyoSuite:> Registering Myo Envs"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def _without_banners(*texts: str) -> Iterator[None]:
    """Capture stdout; write it back minus the lines of `texts` (compared without colours)."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        drop = {line.strip() for text in texts for line in text.splitlines() if line.strip()}
        kept = [
            line
            for line in buffer.getvalue().splitlines(keepends=True)
            if _ANSI.sub("", line).strip() not in drop and _ANSI.sub("", line).strip()
        ]
        sys.stdout.write("".join(kept))


with _without_banners(_BANNER):
    import myosuite  # noqa: F401  (registers the envs with gymnasium)
    from myosuite.envs.myo.base_v0 import BaseV0


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**32:
        raise UserError(f"seed must be in [0, 2**32) for myosuite, got {seed}")


class MyoSuiteEnv(gym.Env):
    """Gymnasium view of one MyoSuite task.

    Seeding: the task's generator (targets, initial poses, object sizes) comes from the seed.
    `reset(seed=s)` reseeds it; MyoSuite resets the simulation state fully, so the episode does
    not depend on earlier ones. `reset()` without a seed continues the stream.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(self, env_id: str, seed: int, render_size: int = 384) -> None:
        _check_seed(seed)
        if env_id not in gym.registry:
            raise UserError(f"unknown MyoSuite environment '{env_id}'")
        self.env_id = env_id
        self.render_mode = "rgb_array"
        self.render_size = render_size
        with _without_banners(BaseV0.MYO_CREDIT), warnings.catch_warnings():
            # its observation bounds are float64; gymnasium warns when casting them to float32
            warnings.filterwarnings("ignore", message=r".*Box (low|high)'s precision lowered")
            self._env = gym.make(env_id, seed=seed).unwrapped
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
            self._env.robot.np_random = self._env.np_random  # the robot keeps its own reference
        obs, _ = self._env.reset()
        return np.asarray(obs, dtype=np.float32), {"success": 0.0}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        obs, reward, _, _, info = self._env.step(a)
        info = {"success": float(info["solved"])}
        return np.asarray(obs, dtype=np.float32), float(reward), False, False, info

    def render(self, size: int | None = None, shadows: bool = True) -> np.ndarray:
        """An RGB frame (uint8, size x size, default `render_size`) from TD-MPC2's camera."""
        size = size or self.render_size
        return self._frames.render(self._env.mj_model, self._env.mj_data, size, CAMERA, shadows)

    def close(self) -> None:
        self._frames.close()
        self._env.close()

    @property
    def sim(self) -> Any:
        """The underlying MyoSuite env (for tests and debugging)."""
        return self._env


def make_myosuite_env(env_kwargs: Any, seed: int) -> MyoSuiteEnv:
    """Base env of a registered myosuite task (its TaskSpec.env_kwargs)."""
    return MyoSuiteEnv(env_kwargs["env_id"], seed)
