"""The TD-MPC2 agent: world model + optimizers + batched planning, without any env or Ray code.

`act` plans for E envs in one call; the per-env warm-start mean lives in a state dict that the
caller carries (an RLModule passes it as STATE_IN/STATE_OUT). `update` does ONE backward over
world-model loss + policy loss (DDP-safe), skips non-finite steps and counts them.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ldmpc.compile import maybe_compile
from ldmpc.envs.multitask import split_task_obs
from ldmpc.errors import UserError
from ldmpc.losses import Batch, RunningScale, total_loss
from ldmpc.planner import plan, sample_noise
from ldmpc.world_model import WorldModel

AgentState = dict[str, torch.Tensor]


def plain_config(cfg: Any) -> SimpleNamespace:
    """Attribute view of the config with plain Python values: cheap attribute reads in the hot
    loops and nothing OmegaConf-specific for torch.compile to trace."""
    if isinstance(cfg, DictConfig):
        return SimpleNamespace(**OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    return cfg


MAX_NONFINITE_STREAK = 100  # a run aborts after this many non-finite losses in a row (§4)


def check_nonfinite_streak(streak: float, lr: float, suspects: str) -> None:
    """One line (UserError) once `streak` non-finite losses in a row reach the limit: the
    online and the offline loop skip such updates, but a run that only skips has diverged."""
    if streak >= MAX_NONFINITE_STREAK:
        raise UserError(
            f"{int(streak)} non-finite losses in a row: training diverged "
            f"(lower lr={lr} or check {suspects})"
        )


class Agent:
    """Holds the world model, its two Adam optimizers, the Q scale, the acting RNG and counters."""

    def __init__(self, cfg: Any, device: torch.device | str = "cpu") -> None:
        self.cfg = plain_config(cfg)
        self.device = torch.device(device)
        self.model = WorldModel(self.cfg).to(self.device).eval()
        self.scale = RunningScale(self.cfg.tau).to(self.device)
        m, lr = self.model, self.cfg.lr
        dynamics = list(m._dynamics.parameters()) if m._dynamics is not None else []
        wm_groups = [
            {"params": list(m._encoder.parameters()), "lr": lr * self.cfg.enc_lr_scale},
            {"params": [*dynamics, *m._reward.parameters(), *m._Qs.parameters()]},
        ]
        if self.model.multitask:
            wm_groups.append({"params": list(m._task_emb.parameters())})
        for name in ("_diff_dynamics", "_proposals"):  # after the TD-MPC2 groups: old
            # checkpoints' optimizer states keep matching group by group
            if getattr(m, name, None) is not None:
                wm_groups.append({"params": list(getattr(m, name).parameters())})
        fused = {"fused": True} if self.device.type in ("cpu", "cuda") else {}
        self.optim = torch.optim.Adam(wm_groups, lr=lr, **fused)
        self._lrs = [g["lr"] for g in self.optim.param_groups]  # this config's rates
        self.pi_optim = torch.optim.Adam(m._pi.parameters(), lr=lr, eps=1e-5, **fused)
        self._wm_params = [p for g in wm_groups for p in g["params"]]
        self._pi_params = list(m._pi.parameters())
        self.generator = torch.Generator(self.device).manual_seed(int(self.cfg.seed))
        self.counters = {"updates": 0, "skipped_updates": 0, "consecutive_skips": 0}
        compile_on = bool(getattr(self.cfg, "compile", False))
        self._grads = maybe_compile(self._compute_grads, compile_on, "update")
        self._plan = maybe_compile(plan, compile_on, "plan")

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
        z = self.model.encode(obs, task)
        if not self.cfg.mpc:
            eps = torch.randn(E, self.cfg.action_dim, device=self.device, generator=self.generator)
            action, info = self.model.pi(z, task, eps=eps)
            action = info["mean"] if eval_mode else action
            return action, state if state is not None else self.initial_state(E)
        noise = sample_noise(self.cfg, E, self.device, self.generator)
        prev_mean = state["mean"].to(self.device) if state is not None else None
        mask = self.model.action_mask(task)
        action, mean = self._plan(
            self.model, z, prev_mean, is_first, self.cfg, eval_mode, noise, None, mask, task
        )
        return action, {"mean": mean}

    # ------------------------------------------------------------------ learning
    def _compute_grads(self, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Zero grads, one backward over the total loss, clip each part; no state is mutated."""
        self.optim.zero_grad(set_to_none=True)
        self.pi_optim.zero_grad(set_to_none=True)
        loss, metrics, new_scale = total_loss(self.model, batch, self.cfg, self.scale)
        loss.backward()
        clip = self.cfg.grad_clip_norm
        metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(self._wm_params, clip, foreach=True)
        metrics["pi_grad_norm"] = torch.nn.utils.clip_grad_norm_(
            self._pi_params, clip, foreach=True
        )
        return metrics, new_scale

    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient update from a time-major batch (see `ldmpc.losses`); returns metrics.

        A non-finite loss or gradient norm skips the step (weights, optimizer state, target Q
        and scale stay untouched) and is counted in `skipped_updates` / `consecutive_skips`.
        """
        batch = {k: _to(v, self.device) for k, v in batch.items()}
        self.model.train()
        try:
            metrics, new_scale = self._grads(batch)
        finally:
            self.model.eval()
        names = list(metrics)
        values = torch.stack([metrics[n].float().reshape(()) for n in names])
        finite = torch.isfinite(values).all() & torch.isfinite(new_scale).all()
        host = torch.cat([finite.float().reshape(1), values]).tolist()  # the one sync per update
        info = dict(zip(names, host[1:]))
        if host[0] == 1.0:
            self.optim.step()
            self.pi_optim.step()
            self.commit_update(new_scale)
        else:
            self.optim.zero_grad(set_to_none=True)
            self.pi_optim.zero_grad(set_to_none=True)
            self.skip_update()
        info["skipped"] = float(host[0] != 1.0)
        info.update({k: float(v) for k, v in self.counters.items()})
        return info

    @torch.no_grad()
    def commit_update(self, new_scale: torch.Tensor) -> None:
        """After a successful optimizer step: target-Q EMA, the new Q scale, the counters.

        Shared by `update()` and the RLlib learner (which steps the optimizers itself)."""
        self.model.soft_update_target_Q(self.cfg.tau)
        self.scale.commit(new_scale)
        self.counters["updates"] += 1
        self.counters["consecutive_skips"] = 0

    def skip_update(self) -> None:
        """A non-finite step was dropped: nothing changes but the skip counters."""
        self.counters["skipped_updates"] += 1
        self.counters["consecutive_skips"] += 1

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly: weights, optimizers, scale, counters, RNG."""
        return {
            "model": self.model.state_dict(),
            "optim": self.optim.state_dict(),
            "pi_optim": self.pi_optim.state_dict(),
            "scale": self.scale.state_dict(),
            "counters": dict(self.counters),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])
        self.pi_optim.load_state_dict(state["pi_optim"])
        # torch restores the saved learning rates; the config's win (`resume=true lr=...`, PBT)
        for group, lr in zip(self.optim.param_groups, self._lrs, strict=True):
            group["lr"] = lr
        for group in self.pi_optim.param_groups:
            group["lr"] = self.cfg.lr
        self.scale.load_state_dict(state["scale"])
        self.counters.update({k: int(v) for k, v in state["counters"].items()})
        self.generator.set_state(state["generator"].cpu())


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move to the device; floating data as float32 (some suites emit float64 observations)."""
    dtype = torch.float32 if x.is_floating_point() else None
    return x.to(device, dtype, non_blocking=True)
