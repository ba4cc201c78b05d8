"""The one TD-MPC2 update: loss, ONE backward, clipping, finite check, step, target EMA, Q scale.

Every trainer calls this object: the offline loop and local scripts through `Agent.update`,
the RLlib learner (`learner.tdmpc_learner.TdmpcLearner._update`) directly, one or many
learners (DDP) alike. So a change to the update (a loss term, precision, compilation) is made
once and cannot drift between the loops (docs/design.md §3.3).

One backward: the world-model loss plus the policy loss computed through a detached Q
(`ldmpc.losses.total_loss`), so a DDP wrapper sees one forward and one backward. Gradients are
clipped to `grad_clip_norm` separately for the world model and the policy, as TD-MPC2 does.
A non-finite loss, metric, gradient norm or Q scale skips the step: weights, optimizer state,
target Q and scale stay as they were, and the skip is counted (docs/design.md §4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from ldmpc.compile import LOSS_OPTIONS, CompiledFn, maybe_compile, stop_in, wrapper_options
from ldmpc.errors import UserError
from ldmpc.losses import Batch, RunningScale, total_loss
from ldmpc.precision import compute_precision, resolve_precision

if TYPE_CHECKING:
    from ldmpc.config import Config

LossOut = tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]
LossFn = Callable[[Batch], LossOut]  # batch -> (loss, metrics, candidate Q scale)

MAX_NONFINITE_STREAK = 100  # a run aborts after this many non-finite losses in a row (§4)


def check_nonfinite_streak(streak: float, lr: float, suspects: str) -> None:
    """One line (UserError) once `streak` non-finite losses in a row reach the limit: every
    loop skips such updates, but a run that only skips has diverged."""
    if streak >= MAX_NONFINITE_STREAK:
        raise UserError(
            f"{int(streak)} non-finite losses in a row: training diverged "
            f"(lower lr={lr} or check {suspects})"
        )


def build_optimizers(model: Any, cfg: Config) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """TD-MPC2's two Adams: the world model (encoder at lr * enc_lr_scale) and the policy.

    Group order is part of the checkpoint format: the TD-MPC2 groups first, then the task
    embedding, then the diffusion parts, so older checkpoints' optimizer states still match
    group by group.
    """
    lr = cfg.lr
    dynamics = list(model._dynamics.parameters()) if model._dynamics is not None else []
    groups = [
        {"params": list(model._encoder.parameters()), "lr": lr * cfg.enc_lr_scale},
        {"params": [*dynamics, *model._reward.parameters(), *model._Qs.parameters()]},
    ]
    if model.multitask:
        groups.append({"params": list(model._task_emb.parameters())})
    for part in (model._diff_dynamics, model._proposals):
        if part is not None:
            groups.append({"params": list(part.parameters())})
    device = next(model.parameters()).device
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    optim = torch.optim.Adam(groups, lr=lr, **fused)
    pi_optim = torch.optim.Adam(model._pi.parameters(), lr=lr, eps=1e-5, **fused)
    return optim, pi_optim


class Update:
    """Owns the optimizers and the update counters of one world model; `__call__` is one update.

    `loss_fn` replaces the default loss call (`total_loss` on the model) when the forward pass
    must go through a wrapper, e.g. DDP's, so that its gradient hooks fire.
    """

    def __init__(
        self,
        model: Any,
        scale: RunningScale,
        cfg: Config,
        optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer] | None = None,
        loss_fn: LossFn | None = None,
    ) -> None:
        self.model, self.scale, self.cfg = model, scale, cfg
        self.optim, self.pi_optim = optimizers or build_optimizers(model, cfg)
        self._lrs = [g["lr"] for g in self.optim.param_groups]  # this config's rates
        self._wm_params = [p for g in self.optim.param_groups for p in g["params"]]
        self._pi_params = [p for g in self.pi_optim.param_groups for p in g["params"]]
        self.counters = {"updates": 0, "skipped_updates": 0, "consecutive_skips": 0}
        # compile=true: the loss is one graph (forward, and its backward through AOTAutograd;
        # tests/test_compile.py counts zero graph breaks); zeroing, backward() and the two
        # foreach clips stay eager. A wrapper's forward (DDP) compiles its own loss call.
        device = next(model.parameters()).device
        options = {**LOSS_OPTIONS, **wrapper_options(cfg.overlap, device)}
        self._loss_fn = loss_fn or maybe_compile(
            self._model_loss, bool(cfg.compile), "update", options=options
        )
        self._backward_ok = False  # a backward has run (compiled, when compile=true)

    def _model_loss(self, batch: Batch) -> LossOut:
        return total_loss(self.model, batch, self.cfg, self.scale)

    def _compute_grads(self, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Zero grads, one backward over the total loss, clip each part; no state is mutated."""
        self.optim.zero_grad(set_to_none=True)
        self.pi_optim.zero_grad(set_to_none=True)
        device = batch["obs"].device
        dtype, _ = resolve_precision(self.cfg.precision, device.type)
        with compute_precision(device, dtype):  # the forward; backward follows its dtypes
            loss, metrics, new_scale = self._loss_fn(batch)
        try:
            loss.backward()
        except Exception as err:
            if (stop := stop_in(err)) is not None:  # a stop abandoned its compilation
                raise stop from None
            # AOTAutograd compiles the backward lazily, at its first call: a compiler failure
            # there surfaces here, outside CompiledFn's own fallback. Run eagerly from now on.
            compiled = self._loss_fn
            if not isinstance(compiled, CompiledFn) or not compiled.active or self._backward_ok:
                raise
            compiled.fall_back(err)
            return self._compute_grads(batch)
        self._backward_ok = True
        clip = self.cfg.grad_clip_norm
        metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(self._wm_params, clip, foreach=True)
        metrics["pi_grad_norm"] = torch.nn.utils.clip_grad_norm_(
            self._pi_params, clip, foreach=True
        )
        return metrics, new_scale

    def __call__(self, batch: Batch) -> dict[str, float]:
        """One gradient update from a time-major batch on the model's device; returns metrics
        (host floats, the one sync per update) including `skipped` and the counters."""
        self.model.train()  # explicit: Q dropout is on in updates, whoever calls this
        try:
            metrics, new_scale = self._compute_grads(batch)
        finally:
            self.model.eval()
        names = list(metrics)
        values = torch.stack([metrics[n].float().reshape(()) for n in names])
        finite = (torch.isfinite(values).all() & torch.isfinite(new_scale).all()).float()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # DDP: every rank must step or skip together, or the replicas drift apart
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        host = torch.cat([finite.reshape(1), values]).tolist()
        info = dict(zip(names, host[1:]))
        if host[0] == 1.0:
            self.optim.step()
            self.pi_optim.step()
            self._commit(new_scale)
        else:
            self.optim.zero_grad(set_to_none=True)
            self.pi_optim.zero_grad(set_to_none=True)
            self.counters["skipped_updates"] += 1
            self.counters["consecutive_skips"] += 1
        info["skipped"] = float(host[0] != 1.0)
        info.update({k: float(v) for k, v in self.counters.items()})
        return info

    @torch.no_grad()
    def _commit(self, new_scale: torch.Tensor) -> None:
        """After a successful optimizer step: target-Q EMA, the new Q scale, the counters."""
        self.model.soft_update_target_Q(self.cfg.tau)
        self.scale.commit(new_scale)
        self.counters["updates"] += 1
        self.counters["consecutive_skips"] = 0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "optim": self.optim.state_dict(),
            "pi_optim": self.pi_optim.state_dict(),
            "counters": dict(self.counters),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optim.load_state_dict(state["optim"])
        self.pi_optim.load_state_dict(state["pi_optim"])
        # torch restores the saved learning rates; the config's win (`resume=true lr=...`, PBT)
        for group, lr in zip(self.optim.param_groups, self._lrs, strict=True):
            group["lr"] = lr
        for group in self.pi_optim.param_groups:
            group["lr"] = self.cfg.lr
        self.counters.update({k: int(v) for k, v in state["counters"].items()})
