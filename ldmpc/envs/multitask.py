"""Multitask envs: one gymnasium env that plays the tasks of a task set in shared, padded spaces.

TD-MPC2 trains one world model on tasks whose observation and action sizes differ: observations
are zero-padded to the largest task's size and padded action dims are masked. Each sub-env of a
multitask vector env is a `MultitaskEnv`:
- observation: the task's state zero-padded to `obs_dim`, plus ONE trailing slot holding the task
  index (into cfg.tasks). RLlib's env runner passes only observations to the planner module, so
  the slot is how the task id travels with them; `split_task_obs` takes it off before the encoder
  and `multitask_episode` moves it into the stored episode's `task`.
- action: Box(-1, 1, [action_dim]); the task's env receives its first `action_dims[task]` dims.
- schedule: episode k plays tasks[(first + k * stride) % T]. A run gives its N sub-envs
  first = 0..N-1 and stride = N, so the sub-envs spread over the task set round-robin (with N a
  multiple of T each sub-env keeps one task and tasks get equal env steps); stride 0 keeps one
  task (evaluation).
- seeding: each task's env is seeded from (the sub-env's seed, the task), so sub-envs and
  runners with distinct seeds never replay one another's start states, whichever task they
  build later; a `reset(seed=s)` re-seeds every task env of the sub-env from s at its next use.
Each task's env is built on first use and kept; its own wrappers give it its episode length,
action repeat and success flag, so per-task episode lengths hold as TD-MPC2 defines them.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np


class MultitaskEnv(gym.Env):
    """See the module docstring. `seed` seeds each task's env at construction."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        tasks: list[str],
        first: int,
        stride: int,
        seed: int,
        obs_dim: int,
        action_dim: int,
    ) -> None:
        if not tasks or stride < 0:
            raise ValueError(f"need tasks and stride >= 0, got {len(tasks)} tasks, stride {stride}")
        self.tasks = list(tasks)
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        self._first, self._stride, self._seed = int(first), int(stride), int(seed)
        self._envs: dict[int, gym.Env] = {}
        self._unseeded: set[int] = set()  # task envs to re-seed from self._seed at next reset
        self._resets = 0
        self.task_index = self._first % len(self.tasks)
        self.render_mode = "rgb_array"
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.obs_dim + 1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.action_dim,), np.float32)

    @property
    def task(self) -> str:
        return self.tasks[self.task_index]

    def _task_seed(self) -> int:
        """The current task's env seed, derived from this sub-env's seed and the task index."""
        return int(np.random.SeedSequence([self._seed, self.task_index]).generate_state(1)[0])

    def _env(self) -> gym.Env:
        if self.task_index not in self._envs:
            from ldmpc.envs import make_env

            self._envs[self.task_index] = make_env(self.task, seed=self._task_seed())
            self._unseeded.discard(self.task_index)  # its first reset uses that seed
        return self._envs[self.task_index]

    def _pad(self, obs: Any) -> np.ndarray:
        out = np.zeros(self.obs_dim + 1, np.float32)
        flat = np.asarray(obs, np.float32).ravel()
        out[: flat.size] = flat
        out[-1] = self.task_index
        return out

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None:
            self._seed = int(seed)
            self._unseeded = set(self._envs)
        self.task_index = (self._first + self._resets * self._stride) % len(self.tasks)
        self._resets += 1
        env = self._env()
        task_seed = None
        if self.task_index in self._unseeded:
            task_seed = self._task_seed()
            self._unseeded.discard(self.task_index)
        obs, info = env.reset(seed=task_seed, options=options)
        return self._pad(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        env = self._env()
        act = np.asarray(action, np.float32)[: env.action_space.shape[0]]
        obs, reward, terminated, truncated, info = env.step(act)
        return self._pad(obs), reward, terminated, truncated, info

    def render(self) -> Any:
        return self._env().render()

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


@cache
def task_dims(tasks: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(obs dims, action dims) of each task, read from one probe env per task (cached)."""
    from ldmpc.envs import make_env

    obs_dims, action_dims = [], []
    for name in tasks:
        env = make_env(name, seed=0)
        try:
            obs_dims.append(int(np.prod(env.observation_space.shape)))
            action_dims.append(int(env.action_space.shape[0]))
        finally:
            env.close()
    return tuple(obs_dims), tuple(action_dims)


def split_task_obs(obs: Any) -> tuple[Any, Any]:
    """Multitask observations [..., obs_dim + 1] -> (observations [..., obs_dim], task ids [...])
    (torch tensors or numpy arrays; ids as integers)."""
    task = obs[..., -1]
    task = task.long() if hasattr(task, "long") else task.astype(np.int64)
    return obs[..., :-1], task


def multitask_episode(data: dict[str, np.ndarray], action_dims: list[int]) -> dict[str, Any]:
    """A recorded multitask episode in replay format: the task slot leaves the observations and
    becomes the episode's `task`; padded action dims are stored as zeros (random seed-phase
    actions fill them, and the model must never learn from them)."""
    obs, task = split_task_obs(data["obs"])
    index = int(task[0])
    action = data["action"].copy()
    action[:, int(action_dims[index]) :] = 0.0
    return {**data, "obs": np.ascontiguousarray(obs), "action": action, "task": index}
