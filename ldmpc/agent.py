"""The TD-MPC2 agent: world model + batched planning, without any env or Ray code.

`act` plans for E envs in one call; the per-env warm-start mean lives in a state dict that the
caller carries (an RLModule passes it as STATE_IN/STATE_OUT). A learning agent also holds the
one update (`ldmpc.update.Update`: optimizers, one backward, finite checks, EMA); an acting-only
one (env runners, evaluation) builds no optimizers.
"""

from __future__ import annotations

from typing import Any

import torch

from ldmpc.compile import maybe_compile, plan_compile_kwargs
from ldmpc.config import Config
from ldmpc.envs.multitask import split_task_obs
from ldmpc.losses import Batch, RunningScale
from ldmpc.planner import plan, sample_noise
from ldmpc.precision import compute_precision, resolve_precision
from ldmpc.update import Update
from ldmpc.world_model import WorldModel

AgentState = dict[str, torch.Tensor]


class Agent:
    """Holds the world model, the Q scale, the acting RNG and, when it learns, its `Update`."""

    def __init__(self, cfg: Config, device: torch.device | str = "cpu", learn: bool = True) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        # Initial weights come from cfg.seed alone, not from what else this process built
        # first: a learner, an env runner and an evaluator agree, the run's own random stream
        # (dropout, policy noise) does not depend on which of them share the process (so an
        # evaluator may live in the driver or in its own actor with the same results).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.cfg.seed))
            self.model = WorldModel(self.cfg).to(self.device).eval()
        self.scale = RunningScale(self.cfg.tau).to(self.device)
        self.generator = torch.Generator(self.device).manual_seed(int(self.cfg.seed))
        self._plan = maybe_compile(
            plan, bool(cfg.compile), "plan", **plan_compile_kwargs(cfg.overlap, self.device)
        )
        self._cuda_graphs = bool(cfg.compile) and self.device.type == "cuda"
        # An acting-only agent (env runners, evaluation) builds no optimizers; a learner that
        # builds its own `Update` (the RLlib learner) attaches it with `attach_update`.
        self.learn: Update | None = Update(self.model, self.scale, self.cfg) if learn else None

    def attach_update(self, update: Update) -> None:
        """Use `update` (built on this agent's model and scale) for `update()` and the state."""
        self.learn = update

    # ------------------------------------------------------------------ acting
    def initial_state(self, num_envs: int) -> AgentState:
        """Per-env planner state at episode start (zero warm-start mean)."""
        shape = (num_envs, self.cfg.horizon, self.cfg.action_dim)
        return {"mean": torch.zeros(shape, device=self.device)}

    @torch.no_grad()
    def act(
        self,
        obs: torch.Tensor,
        state: AgentState | None = None,
        is_first: torch.Tensor | None = None,
        eval_mode: bool = False,
        task: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, AgentState]:
        """Actions [E, A] in [-1, 1] for observations [E, *obs_shape], and the new state.

        Multitask: `task` [E] long, or None when the observations carry the task id in their
        last slot (`ldmpc.envs.multitask`). `is_first` [E] bool marks envs whose episode just
        started (no warm start); without a state every env counts as first. With mpc=false
        the policy prior acts (mean in eval).
        """
        if self.model.multitask and task is None:  # the env's trailing task-id slot
            obs, task = split_task_obs(obs)
        obs = obs.to(self.device, torch.float32, non_blocking=True)
        E = obs.shape[0]
        if is_first is None:
            is_first = torch.full((E,), state is None, dtype=torch.bool)
        is_first = is_first.to(self.device)
        if task is not None:
            task = task.to(self.device)
        dtype, _ = resolve_precision(self.cfg.precision, self.device.type)
        with compute_precision(self.device, dtype):
            z = self.model.encode(obs, task)
            if not self.cfg.mpc:
                eps = torch.randn(
                    E, self.cfg.action_dim, device=self.device, generator=self.generator
                )
                action, info = self.model.pi(z, task, eps=eps)
                action = info["mean"] if eval_mode else action
                return action.float(), state if state is not None else self.initial_state(E)
            noise = sample_noise(self.cfg, E, self.device, self.generator)
            # Without a state every env is first: plan from a zero mean rather than None, so
            # the compiled plan has one graph per shape, not two (a second trace and inductor
            # compile cost ~28 s here on a cold cache). Same values: warm_start zeroes it.
            prev_mean = (state if state is not None else self.initial_state(E))["mean"]
            prev_mean = prev_mean.to(self.device)
            mask = self.model.action_mask(task)
            if self._cuda_graphs:  # a new decision: the last one's graph outputs may go
                torch.compiler.cudagraph_mark_step_begin()
            action, mean = self._plan(
                self.model, z, prev_mean, is_first, self.cfg, eval_mode, noise, None, mask, task
            )
            if self._cuda_graphs:  # the next replay overwrites a graph's outputs
                action, mean = action.clone(), mean.clone()
        return action.float(), {"mean": mean.float()}

    # ------------------------------------------------------------------ learning
    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient update (`ldmpc.update.Update`) from a time-major batch; returns metrics."""
        if self.learn is None:
            raise RuntimeError("this Agent was built with learn=False: it has no optimizers")
        return self.learn({k: _to(v, self.device) for k, v in batch.items()})

    @property
    def counters(self) -> dict[str, int]:
        return self.learn.counters if self.learn is not None else {}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly: weights, Q scale, acting RNG and, when
        this agent learns, the optimizers and update counters (`Update.state_dict`)."""
        state = {
            "model": self.model.state_dict(),
            "scale": self.scale.state_dict(),
            "generator": self.generator.get_state(),
        }
        return {**state, **(self.learn.state_dict() if self.learn is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict`; an acting-only agent takes the weights, scale and RNG of a
        full state and leaves the optimizers' part aside."""
        self.model.load_state_dict(state["model"])
        self.scale.load_state_dict(state["scale"])
        self.generator.set_state(state["generator"].cpu())
        if self.learn is not None:
            self.learn.load_state_dict(state)


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move to the device; floating data as float32 (some suites emit float64 observations)."""
    dtype = torch.float32 if x.is_floating_point() else None
    return x.to(device, dtype, non_blocking=True)
