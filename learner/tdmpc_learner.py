"""TD-MPC2's update as an RLlib TorchLearner: one forward, ONE backward, clip, step, EMA.

Mapping onto RLlib's update (`TorchLearner._uncompiled_update`):
- forward_train: `PlannerModule._forward_train` returns the total loss (world model + policy
  through a detached Q), so a DDP-wrapped module sees a single forward and backward.
- optimizers: the agent's own two Adams ("model": encoder at lr*enc_lr_scale, the rest at lr;
  "pi": eps 1e-5), registered with RLlib. No lr schedule is registered, so RLlib never
  overwrites the per-group learning rates. Their state is part of `Agent.state_dict()`.
- grad clip: RLlib's per-optimizer global-norm clipping (`grad_clip`, `grad_clip_by`), i.e.
  TD-MPC2's separate clipping of the world-model and the policy parameters.
- non-finite loss, gradients or Q scale: the step is skipped (weights, optimizer state, target
  Q and scale untouched) and counted, as `Agent.update` does (DESIGN.md §4). One host sync.
- target-Q EMA and the Q-scale commit: `after_gradient_based_update`, once per update.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.utils.typing import ModuleID, ParamDict, TensorType

NONFINITE_TOTAL = "nonfinite_updates"
NONFINITE_STREAK = "nonfinite_streak"


class TdmpcLearner(TorchLearner):
    """Learner = optimizers + the update step; the loss math lives in ldmpc (losses, agent)."""

    def build(self) -> None:
        if self.config.num_learners > 0:  # a remote actor: pin its torch threads (§3.3)
            from ldmpc.runtime import set_actor_threads

            set_actor_threads(self.config)
        super().build()
        self._step_ok = True
        self._fwd_out: dict[ModuleID, dict[str, Any]] = {}

    def configure_optimizers_for_module(self, module_id: ModuleID, config: Any = None) -> None:
        agent = self.module[module_id].unwrapped().agent
        for name, optimizer in (("model", agent.optim), ("pi", agent.pi_optim)):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            self.register_optimizer(
                module_id=module_id, optimizer_name=name, optimizer=optimizer, params=params
            )

    def compute_loss_for_module(
        self, *, module_id: ModuleID, config: Any, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> TensorType:
        self._fwd_out[module_id] = fwd_out
        info = {k: v for k, v in fwd_out.get("info", {}).items() if _is_scalar(v)}
        if info:
            self.metrics.log_dict(info, key=module_id, window=1)
        return fwd_out["loss"]

    def apply_gradients(self, gradients_dict: ParamDict) -> None:
        """Step only when the loss, every (clipped) gradient and the new Q scale are finite."""
        checks = [out["loss"].detach().reshape(1) for out in self._fwd_out.values()]
        checks += [out["new_scale"].detach().reshape(-1) for out in self._fwd_out.values()]
        grads = [g for g in gradients_dict.values() if g is not None]
        if grads:
            checks.append(torch.stack(torch._foreach_norm(grads)))
        self._step_ok = bool(torch.isfinite(torch.cat(checks)).all())  # the one host sync
        if self._step_ok:
            super().apply_gradients(gradients_dict)
        else:
            for optim in self._optimizer_parameters:
                optim.zero_grad(set_to_none=True)

    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        """Commit or skip per module; the skip counters live in the agent, so a checkpoint
        carries them and the abort streak survives a resume."""
        super().after_gradient_based_update(timesteps=timesteps)
        for module_id in self._fwd_out:
            module = self.module[module_id].unwrapped()
            if self._step_ok:
                module.commit_update()
            else:
                module.skip_update()
            counters = module.agent.counters
            self.metrics.log_value(NONFINITE_TOTAL, counters["skipped_updates"], window=1)
            self.metrics.log_value(NONFINITE_STREAK, counters["consecutive_skips"], window=1)
        self._fwd_out = {}

    # ------------------------------------------------------------------ checkpoint helpers
    def agent_state(self, module_id: ModuleID) -> dict[str, Any]:
        """`Agent.state_dict()`: weights, both optimizers, Q scale, counters, acting RNG."""
        return self.module[module_id].unwrapped().agent.state_dict()

    def set_agent_state(self, module_id: ModuleID, state: dict[str, Any]) -> None:
        self.module[module_id].unwrapped().agent.load_state_dict(state)


def _is_scalar(v: Any) -> bool:
    return isinstance(v, int | float) or (isinstance(v, torch.Tensor) and v.numel() == 1)
