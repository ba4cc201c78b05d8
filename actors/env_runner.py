"""Env runner side: the env creator, a thin SingleAgentEnvRunner subclass, episode stitching.

RLlib's `SingleAgentEnvRunner` steps a gymnasium vector env (sync mode, next-step autoreset) and
records `SingleAgentEpisode`s. A `sample(num_timesteps=n)` call returns finished episodes plus
chunks of ongoing ones (cut at the call boundary, same episode id). TD-MPC2's replay stores
whole episodes, so `EpisodeStitcher` joins chunks by id and hands out only finished episodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from actors.worker_setup import quiet_ray_logs

ENV_NAME = "ldmpc-env"  # the name the env runners create their sub-envs by
SEED_STRIDE = 10_000  # seed offset between env runners: runner w, sub-env i -> seed + w*S + i


def register_ldmpc_env() -> str:
    """Register the env creator with Ray's registry (RLlib accepts classes or registered ids)."""
    from ray.tune.registry import register_env

    register_env(ENV_NAME, make_ldmpc_env)
    return ENV_NAME


def make_ldmpc_env(ctx: dict[str, Any]) -> gym.Env:
    """Env creator behind ENV_NAME; `config.environment(env_config=...)` fills ctx.

    ctx (RLlib's EnvContext) holds task, obs and seed. The runner's first `reset(seed=...)`
    re-seeds every sub-env (seed + i for sub-env i), see `LdmpcEnvRunner`.

    Multitask (ctx holds `tasks`): a `MultitaskEnv` whose schedule starts at its global sub-env
    index and strides by the run's number of sub-envs (round-robin over the task set). RLlib
    builds a runner's sub-envs one after another from the same ctx object, so the count kept
    in it is the sub-env index; remote runner w (1-based) owns indices (w-1)*num_envs + i.
    """
    if ctx.get("tasks"):
        from ldmpc.envs.multitask import MultitaskEnv

        local = int(ctx.get("_sub_envs_made", 0))
        ctx["_sub_envs_made"] = local + 1
        worker = int(getattr(ctx, "worker_index", 0))
        return MultitaskEnv(
            list(ctx["tasks"]),
            first=max(worker - 1, 0) * int(ctx["num_envs"]) + local,
            stride=int(ctx["num_sub_envs"]),
            seed=int(ctx["seed"]) + SEED_STRIDE * worker + local,  # as the runner's resets
            obs_dim=int(ctx["obs_dim"]),
            action_dim=int(ctx["action_dim"]),
        )
    from ldmpc.envs import make_env

    return make_env(ctx["task"], seed=int(ctx["seed"]), obs=ctx.get("obs", "state"))


class LdmpcEnvRunner(SingleAgentEnvRunner):
    """SingleAgentEnvRunner with distinct env seeds, seeded random actions, the planning device.

    - RLlib seeds runner w with seed + w, so sub-envs of neighbouring runners would share seeds
      (seed + w + i); here runner w uses seed + w * SEED_STRIDE.
    - Seed-phase actions come from the vector env's action space (`sample(random_actions=True)`);
      its RNG is seeded from the runner seed so runs are reproducible.
    - RLlib puts the local runner's module on the CPU regardless of GPUs; in local mode the
      planner must run where `cfg.device` says, so the module is moved there.
    """

    def __init__(self, *, config: Any, **kwargs: Any) -> None:
        if kwargs.get("worker_index"):  # a remote actor: pin its torch threads (design §3.3)
            from ldmpc.runtime import set_actor_threads

            set_actor_threads(config)
            quiet_ray_logs()  # its log lines reach the driver's terminal
        super().__init__(config=config, **kwargs)

    def make_env(self) -> None:
        if self.config.seed is not None:
            self._seed = int(self.config.seed) + SEED_STRIDE * int(self.worker_index or 0)
        super().make_env()
        if self._seed is not None:
            self.env.action_space.seed(self._seed)

    def reseed_acting(self, step: int) -> None:
        """After a resume: draw exploration noise, seed-phase actions and the next env resets
        from streams derived from the step reached, so the randomness of step 0 is not replayed.
        """
        base = (self._seed or 0) + int(step)
        self._seed = base  # RLlib's next env reset uses it
        if self.env is not None:  # the driver's runner has no env when remote runners act
            self.env.action_space.seed(base)
        if self.module is not None:
            self.module.agent.generator.manual_seed(base)

    def share_weights(self, source: torch.nn.Module, version: int) -> bool:
        """Act with `source`'s own tensors (a learner module in this process, on this device)
        from now on, so later updates need no copy; False when they cannot be shared.

        The learner changes its weights in place (optimizer steps, target EMA, Q scale, resume
        loads), so the runner sees each update as it lands. The sync loop acts only between
        updates, so it acts with exactly the weights a copy would have given it. The caller
        checks `shares_weights` before relying on it (a learner that replaced a tensor would
        end the sharing)."""
        own = self.module
        if own is None or _device(own) != _device(source):
            return False
        own.load_state_dict(source.state_dict(), assign=True)
        self.set_weights_version(version)
        return True

    def copy_weights(self, source: torch.nn.Module, version: int) -> bool:
        """Copy `source`'s weights (a learner module in this process) into this runner's own
        tensors in one foreach call; False when their names, shapes, dtypes or devices differ.

        What a local runner that plans while the learner updates (`overlap`, `sync_every` > 1)
        needs after each update, on the critical path: `load_state_dict` took 2.9 ms at
        model_size 1, mostly Python per module and per tensor."""
        if self.module is None:
            return False
        own, new = self.module.state_dict(), source.state_dict()
        if own.keys() != new.keys() or any(
            (t.shape, t.dtype, t.device) != (new[k].shape, new[k].dtype, new[k].device)
            for k, t in own.items()
        ):
            return False
        with torch.no_grad():
            torch._foreach_copy_(list(own.values()), [new[k] for k in own])
        self.set_weights_version(version)
        return True

    def shares_weights(self, source: torch.nn.Module) -> bool:
        """True while this runner's module holds `source`'s tensors (same storage)."""
        if self.module is None:
            return False
        own = self.module.state_dict()
        return all(
            k in own and own[k].data_ptr() == v.data_ptr() for k, v in source.state_dict().items()
        )

    def set_weights_version(self, version: int) -> None:
        """The weights version this runner acts with (reported with its episodes)."""
        self._weights_seq_no = int(version)

    def make_module(self) -> None:
        super().make_module()
        if self.module is None or self.worker_index:
            return  # remote runners: RLlib's device (num_gpus_per_env_runner) is right
        from ldmpc.runtime import resolve_device

        device = resolve_device(self.module.model_config["ldmpc"]["device"])
        if device != self._device:
            self._device = device
            self.module.to(device)


@dataclass
class FinishedEpisode:
    """One whole episode in replay format plus what the logs need."""

    data: dict[str, np.ndarray]  # obs [T+1, ...], action [T, A], reward [T], terminated [T]
    ret: float
    success: float
    weights_seq_no: int  # newest weights version that planned any step of it
    task: int = 0  # index into cfg.tasks (multitask)
    step: int = 0  # env steps of the run when it was stored (set by the algorithm)
    episode: int = 0  # its number in the run (set by the algorithm)


@dataclass
class _Partial:
    obs: list[np.ndarray] = field(default_factory=list)
    action: list[np.ndarray] = field(default_factory=list)
    reward: list[np.ndarray] = field(default_factory=list)
    success: float = 0.0
    weights_seq_no: int = 0


class EpisodeStitcher:
    """Joins the chunks of each episode (by id) across `sample()` calls.

    Each chunk after the first starts with the observation the previous chunk ended with, so
    that observation is dropped when joining. When a run stops, `flush()` hands out the
    episodes still running as truncated ones, so their steps are not lost to replay.
    """

    def __init__(self) -> None:
        self._open: dict[str, _Partial] = {}

    @property
    def num_open(self) -> int:
        return len(self._open)

    def add(self, chunks: list[SingleAgentEpisode]) -> list[FinishedEpisode]:
        finished = []
        for chunk in chunks:
            part = self._open.setdefault(chunk.id_, _Partial())
            if len(chunk) > 0:
                obs = np.asarray(chunk.get_observations())
                part.obs.append(obs if not part.obs else obs[1:])
                part.action.append(np.asarray(chunk.get_actions(), np.float32))
                part.reward.append(np.asarray(chunk.get_rewards(), np.float32))
                part.success = _last_success(chunk)
                part.weights_seq_no = max(part.weights_seq_no, _weights_seq_no(chunk))
            if chunk.is_done:
                del self._open[chunk.id_]
                if part.action:
                    finished.append(_finish(part, terminated=chunk.is_terminated))
        return finished

    def flush(self) -> list[FinishedEpisode]:
        """The open episodes, cut where they are (truncated); the stitcher is empty after."""
        parts, self._open = list(self._open.values()), {}
        return [_finish(part, terminated=False) for part in parts if part.action]


def _finish(part: _Partial, terminated: bool) -> FinishedEpisode:
    reward = np.concatenate(part.reward)
    term = np.zeros(len(reward), bool)
    term[-1] = terminated
    obs = np.concatenate(part.obs)
    data = {
        # float states as float32 (some suites emit float64); uint8 pixels stay uint8
        "obs": obs.astype(np.float32, copy=False) if obs.dtype.kind == "f" else obs,
        "action": np.concatenate(part.action),
        "reward": reward,
        "terminated": term,
    }
    return FinishedEpisode(data, float(reward.sum()), part.success, part.weights_seq_no)


def _last_success(chunk: SingleAgentEpisode) -> float:
    """Success at the chunk's last step; for a finished episode that is its final step, which
    is what TD-MPC2 reports (not "ever succeeded")."""
    info = chunk.get_infos(-1)
    return float(info.get("success", 0.0)) if isinstance(info, dict) else 0.0


def _weights_seq_no(chunk: SingleAgentEpisode) -> int:
    if WEIGHTS_SEQ_NO not in chunk.extra_model_outputs:
        return 0
    return int(np.max(chunk.get_extra_model_outputs(WEIGHTS_SEQ_NO)))


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
