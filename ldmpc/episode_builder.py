"""`EpisodeBuilder`: vector-env steps in, whole episodes out (`EpisodeReplay.add_episode` format).

Its own file because it is the env-side half of the replay: it only accumulates partial episodes
and never touches the replay's storage (re-exported from `ldmpc.replay`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ldmpc.replay import Episode


@dataclass
class _Partial:
    task: int
    obs: list[np.ndarray] = field(default_factory=list)
    action: list[np.ndarray] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)


class EpisodeBuilder:
    """Assembles whole episodes from the steps of N parallel envs; each is emitted when it ends.

    Per step and env pass the observation the action was taken in (o_t), the action, the reward
    and the end flags; when the episode ends (terminated or truncated) also pass `final_obs`
    (o_T: gymnasium's final observation, not the auto-reset one). Finished episodes go to `sink`
    (e.g. `EpisodeReplay.add_episode`) and are returned. Partial episodes are not checkpointed.
    """

    def __init__(self, num_envs: int, sink: Callable[[Episode], Any] | None = None) -> None:
        self.num_envs = int(num_envs)
        self.sink = sink
        self._parts: list[_Partial | None] = [None] * self.num_envs

    def add_step(
        self,
        env_index: int,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float,
        terminated: bool,
        truncated: bool,
        final_obs: np.ndarray | None = None,
        task: int = 0,
    ) -> Episode | None:
        part = self._parts[env_index]
        if part is None:
            part = self._parts[env_index] = _Partial(task=int(task))
        part.obs.append(np.array(obs, copy=True))
        part.action.append(np.asarray(action, np.float32).copy())
        part.reward.append(float(reward))
        part.terminated.append(bool(terminated))
        if not (terminated or truncated):
            return None
        if final_obs is None:
            raise ValueError(f"env {env_index}: final_obs is required when an episode ends")
        self._parts[env_index] = None
        ep = {
            "obs": np.stack([*part.obs, np.asarray(final_obs)]),
            "action": np.stack(part.action),
            "reward": np.asarray(part.reward, np.float32),
            "terminated": np.asarray(part.terminated, bool),
            "task": part.task,
        }
        if self.sink is not None:
            self.sink(ep)
        return ep

    def add_batch(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        final_obs: np.ndarray | None = None,
        task: np.ndarray | None = None,
    ) -> list[Episode]:
        """One vector-env step for all envs (leading axis = env); `final_obs` rows are read only
        for envs whose episode ended."""
        done = []
        for i in range(self.num_envs):
            ended = bool(terminated[i] or truncated[i])
            ep = self.add_step(
                i,
                obs[i],
                action[i],
                reward[i],
                terminated[i],
                truncated[i],
                final_obs[i] if ended and final_obs is not None else None,
                0 if task is None else int(task[i]),
            )
            if ep is not None:
                done.append(ep)
        return done

    def discard(self, env_index: int | None = None) -> None:
        """Drop partial episode(s), e.g. after an env was reset without ending."""
        for i in range(self.num_envs) if env_index is None else [env_index]:
            self._parts[i] = None

    @property
    def pending_steps(self) -> int:
        return sum(len(p.action) for p in self._parts if p is not None)
