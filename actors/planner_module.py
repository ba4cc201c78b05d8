"""The planner as a stateful RLlib RLModule: one batched MPPI call for all envs of a runner.

Why an RLModule: RLlib's env runner then steps the vector env, records episodes and carries
the per-env planner state for us. The warm-start mean travels as `Columns.STATE_IN/STATE_OUT`.
RLlib's env-to-module connector (`AddStatesFromEpisodesToBatch`) feeds `get_initial_state()`
for every episode that has no steps yet, so the warm start is reset at each episode start
without any bookkeeping here; the `first` flag in the state tells the agent which envs those are.

On the learner side the same module holds the world model; the learner's `ldmpc.update.Update`
trains it. Under DDP the loss must be computed inside the wrapped module's forward, so
`_forward_train` gives the whole TD-MPC2 loss (world model + policy through a detached Q) and
the learner does one backward over it (docs/design.md §3.3).
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.torch.torch_rl_module import TorchRLModule
from ray.rllib.utils.annotations import override

from ldmpc.agent import Agent
from ldmpc.compile import LOSS_OPTIONS, maybe_compile
from ldmpc.config import Config, to_dict
from ldmpc.losses import total_loss

FIRST = "first"  # state key: 1.0 while the env has not been planned for in this episode


def module_config(cfg: Config) -> dict[str, Any]:
    """The RLModule `model_config`: our whole derived config (plain dict) + RLlib's max_seq_len.

    max_seq_len is required by RLlib for stateful modules; we never train on sequences of
    module states, so it is 1.
    """
    return {"ldmpc": to_dict(cfg), "max_seq_len": 1}


class PlannerModule(TorchRLModule):
    """Holds an `ldmpc.agent.Agent`; acting plans with it, training returns the TD-MPC2 loss."""

    @override(TorchRLModule)
    def setup(self) -> None:
        cfg = self.cfg = Config.from_dict(self.model_config["ldmpc"])
        # The networks are the agent's world model and Q scale, registered here as this module's
        # weights (weight sync, DDP, RLlib checkpoints). The agent itself is a plain object (the
        # planning logic); built on the CPU, RLlib then moves the module (see _apply). It builds
        # no optimizers: on a learner, TdmpcLearner builds them and attaches the update.
        self.agent = Agent(cfg, torch.device("cpu"), learn=False)
        self.model = self.agent.model
        self.scale = self.agent.scale
        self._obs_ndim = len(cfg.obs_shape)
        # Planning is compiled inside the agent; under DDP the loss is compiled here.
        compile_loss = bool(cfg.compile) and not self.inference_only
        self._loss = maybe_compile(total_loss, compile_loss, "loss", options=LOSS_OPTIONS)

    # ------------------------------------------------------------------ state
    @override(TorchRLModule)
    def get_initial_state(self) -> dict[str, torch.Tensor]:
        """Per-env state of a fresh episode: the agent's (zero warm-start mean), `first` set."""
        state = {k: v[0].cpu() for k, v in self.agent.initial_state(1).items()}
        return {**state, FIRST: torch.ones(())}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @override(torch.nn.Module)
    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> PlannerModule:
        """`.to(device)` moves the registered weights; move the agent's other device state too."""
        out = super()._apply(fn, *args, **kwargs)
        device = self.device
        if device != self.agent.device:
            self.agent.device = device
            self.agent.generator = torch.Generator(device).manual_seed(int(self.cfg.seed))
        return out

    # ------------------------------------------------------------------ acting
    @override(TorchRLModule)
    def _forward_inference(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self._plan(batch, eval_mode=True)

    @override(TorchRLModule)
    def _forward_exploration(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self._plan(batch, eval_mode=False)

    @torch.no_grad()
    def _plan(self, batch: dict[str, Any], eval_mode: bool) -> dict[str, Any]:
        """One MPPI decision for every env in the batch, warm-started from STATE_IN.

        A stateful module gets obs with a time axis of 1 ([E, 1, ...]) from RLlib's default
        connectors and must return actions with it; STATE_OUT has no time axis.
        """
        obs = batch[Columns.OBS]
        timed = obs.dim() == self._obs_ndim + 2
        obs = (obs[:, 0] if timed else obs).to(self.device, torch.float32)
        state_in = {k: v.to(self.device) for k, v in batch[Columns.STATE_IN].items()}
        is_first = state_in.pop(FIRST) > 0.5
        action, state_out = self.agent.act(obs, state_in, is_first, eval_mode=eval_mode)
        not_first = torch.zeros_like(is_first, dtype=torch.float32)
        return {
            Columns.ACTIONS: action.unsqueeze(1) if timed else action,
            Columns.STATE_OUT: {**state_out, FIRST: not_first},
        }

    # ------------------------------------------------------------------ training
    @override(TorchRLModule)
    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """The whole TD-MPC2 loss of one time-major replay batch (`ldmpc.losses`): used under
        DDP only, where the rollout has to run inside the wrapper's forward."""
        loss, metrics, new_scale = self._loss(self.model, batch, self.agent.cfg, self.scale)
        return {"loss": loss, "info": metrics, "new_scale": new_scale}

    @override(TorchRLModule)
    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return self._plan(batch, eval_mode=True)
