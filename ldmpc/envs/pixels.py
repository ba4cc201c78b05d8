"""Pixel observations (`obs=rgb`) as TD-MPC2 defines them: the last 3 RGB frames, 64 x 64.

An observation is uint8 [3 * frames, size, size], channels first, oldest frame first. At reset
every slot holds the first frame; each step drops the oldest frame and appends the new one. The
encoder (`ldmpc.conv_encoder`) scales pixels itself, so replay keeps them as uint8 (a quarter of
float32's memory: 36,864 bytes per transition).

The wrapper goes outside action repeat and the episode limit, so it renders once per agent step
(as TD-MPC2, whose repeat lives inside its env adapters). It asks the base env for a frame with
`env.unwrapped.render(size=..., shadows=False)`; every suite adapter that supports pixels takes
those arguments, and `env.render()` still returns the adapter's large frame for eval videos.

Shadows are off: on a software GL driver (llvmpipe, no GPU) MuJoCo's shadow-map pass dominates
a small frame. 64 x 64 frames on the 2-core CPU: default shadow map 60-80 fps, a 512 map 100-150
fps, no shadows 600-800 fps (docs/design.md §2, idle machine); timed side by side under load,
no shadows was 2.6x (walker-walk) and 3.5x (mw-door-open) faster than the default map. With a
GPU it hardly matters, and the agent sees the same scene minus the shadow.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

RENDER_SIZE = 64  # TD-MPC2's conv encoder assumes 64 x 64 frames
NUM_FRAMES = 3


class PixelObservation(gym.Wrapper):
    """Replace the env's observation by a stack of its last `num_frames` rendered frames."""

    def __init__(
        self,
        env: gym.Env,
        size: int = RENDER_SIZE,
        num_frames: int = NUM_FRAMES,
        shadows: bool = False,
    ) -> None:
        if size < 1 or num_frames < 1:
            raise ValueError(f"need size, num_frames >= 1, got {size}, {num_frames}")
        super().__init__(env)
        self.size, self.num_frames, self.shadows = size, num_frames, shadows
        shape = (3 * num_frames, size, size)
        self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)
        self._stack = np.zeros(shape, np.uint8)

    def _frame(self) -> np.ndarray:
        """The current frame, channels first [3, size, size]."""
        frame = self.env.unwrapped.render(size=self.size, shadows=self.shadows)
        frame = np.asarray(frame, dtype=np.uint8)
        if frame.shape != (self.size, self.size, 3):
            raise RuntimeError(f"expected a {self.size}x{self.size} RGB frame, got {frame.shape}")
        return frame.transpose(2, 0, 1)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        _, info = self.env.reset(seed=seed, options=options)
        self._stack = np.concatenate([self._frame()] * self.num_frames)
        return self._stack, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        _, reward, terminated, truncated, info = self.env.step(action)
        # A new array every step (never written in place): vector envs keep the returned
        # final observation of an episode while the next one starts.
        self._stack = np.concatenate([self._stack[3:], self._frame()])
        return self._stack, reward, terminated, truncated, info
