"""TD-MPC2's update as an RLlib TorchLearner: the Learner owns the optimizers and runs the update.

Where RLlib users look:
- `configure_optimizers_for_module` builds TD-MPC2's two Adams (`ldmpc.update.build_optimizers`:
  "model" with the encoder at lr * enc_lr_scale, "pi" with eps 1e-5) and registers them, so
  RLlib checkpoints them. No lr schedule is registered, so RLlib never overwrites the
  per-group learning rates. Env runners build no optimizers.
- `_update` runs ONE `ldmpc.update.Update` per module: loss, one backward, per-part gradient
  clipping, finite check, optimizer step, target-Q EMA and Q scale. That object is the same one
  the offline loop and local scripts use, so the update exists once (docs/design.md §3.3).
  This departs from RLlib's split of the update into `compute_loss_for_module` /
  `compute_gradients` / `postprocess_gradients` / `apply_gradients` on purpose: TD-MPC2's loss is
  a latent rollout (many calls of the model), the step is skipped as a whole when anything is
  non-finite (under DDP on all ranks together), and with `compile=true` the loss with its
  backward is one compiled graph; spread over RLlib's hooks it would be a second implementation
  of the update. RLlib's own grad_clip / torch_skip_nan_gradients are therefore not used.
- The target Q ensemble is an EMA inside the world model, updated by `Update` after each kept
  step (not RLlib's TargetNetworkAPI): every loop, RLlib's or not, gets it from the one update.
- `compute_loss_for_module` gives the TD-MPC2 loss of one module's forward outputs. Under DDP
  (`num_learners >= 2`) the loss is computed inside the wrapped module's `forward_train` (the
  rollout must run inside DDP's forward for its gradient hooks), and read back from here.
"""

from __future__ import annotations

from typing import Any

import torch
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.utils.annotations import override
from ray.rllib.utils.typing import ModuleID, TensorType

from ldmpc.losses import Batch
from ldmpc.update import LossOut, Update, build_optimizers

# Replay windows are time-major ([H+1, B, ...]); RLlib splits batches along dim 0, so they
# travel batch-major and are flipped back before the update. Other columns (task [B]) are
# batch-major.
TIME_MAJOR_KEYS = ("obs", "action", "reward", "terminated")
NONFINITE_TOTAL = "nonfinite_updates"
NONFINITE_STREAK = "nonfinite_streak"


def to_time_major(batch: dict[str, Any]) -> dict[str, Any]:
    """Batch-major transport batch -> the time-major batch the losses expect."""
    return {k: (v.transpose(0, 1) if k in TIME_MAJOR_KEYS else v) for k, v in batch.items()}


def to_batch_major(batch: dict[str, Any]) -> dict[str, Any]:
    """Replay's time-major numpy batch -> batch-major, so RLlib can shard it along dim 0."""
    return {k: (v.swapaxes(0, 1) if k in TIME_MAJOR_KEYS else v) for k, v in batch.items()}


class TdmpcLearner(TorchLearner):
    """Learner = optimizers + the update; the math lives in ldmpc (losses, update)."""

    @override(TorchLearner)
    def build(self) -> None:
        if self.config.num_learners > 0:  # a remote actor: pin its torch threads (§3.3)
            from ldmpc.runtime import set_actor_threads

            set_actor_threads(self.config)
        self._updates: dict[ModuleID, Update] = {}
        super().build()

    @override(TorchLearner)
    def configure_optimizers_for_module(self, module_id: ModuleID, config: Any = None) -> None:
        module = self.module[module_id].unwrapped()
        cfg = module.agent.cfg  # the plain view the agent reads in its hot loops
        optimizers = build_optimizers(module.model, cfg)
        for name, optimizer in zip(("model", "pi"), optimizers, strict=True):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            self.register_optimizer(
                module_id=module_id, optimizer_name=name, optimizer=optimizer, params=params
            )
        # One learner: the update calls the model itself (and may compile all of it). Under
        # DDP the module gets wrapped after this hook, so the loss goes through the wrapper.
        ddp = self.config.num_learners > 1
        loss_fn = (lambda batch: self._ddp_loss(module_id, batch)) if ddp else None
        update = Update(module.model, module.scale, cfg, optimizers, loss_fn)
        module.agent.attach_update(update)  # its state (optimizers, counters) is the agent's
        self._updates[module_id] = update

    def _ddp_loss(self, module_id: ModuleID, batch: Batch) -> LossOut:
        fwd_out = self.module[module_id].forward_train(batch)
        loss = self.compute_loss_for_module(
            module_id=module_id, config=self.config, batch=batch, fwd_out=fwd_out
        )
        return loss, fwd_out["info"], fwd_out["new_scale"]

    @override(TorchLearner)
    def compute_loss_for_module(
        self, *, module_id: ModuleID, config: Any, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> TensorType:
        return fwd_out["loss"]

    @override(TorchLearner)
    def _update(self, batch: dict[ModuleID, Any]) -> tuple[Any, Any, Any]:
        """One `Update` per module on its (batch-major) share of the replay batch."""
        fwd_out: dict[ModuleID, Any] = {}
        losses: dict[ModuleID, TensorType] = {}
        for module_id, module_batch in batch.items():
            update = self._updates[module_id]
            info = update(to_time_major(dict(module_batch)))
            self.metrics.log_dict(info, key=module_id, window=1)
            self.metrics.log_value(NONFINITE_TOTAL, update.counters["skipped_updates"], window=1)
            self.metrics.log_value(NONFINITE_STREAK, update.counters["consecutive_skips"], window=1)
            fwd_out[module_id] = {}
            losses[module_id] = torch.tensor(info["total_loss"])
        return fwd_out, losses, {}

    # ------------------------------------------------------------------ checkpoint helpers
    def agent_state(self, module_id: ModuleID) -> dict[str, Any]:
        """`Agent.state_dict()`: weights, both optimizers, Q scale, counters, acting RNG."""
        return self.module[module_id].unwrapped().agent.state_dict()

    def set_agent_state(self, module_id: ModuleID, state: dict[str, Any]) -> None:
        self.module[module_id].unwrapped().agent.load_state_dict(state)
