"""TD-MPC2 losses as pure functions of (model, batch, cfg).

`total_loss` returns ONE scalar whose single backward trains every part with its own objective:
the world model (encoder, dynamics, reward, Q) through consistency + reward CE + value CE, and
the policy prior through -Q/scale - entropy bonus, where Q is read with detached parameters and the
latents are detached, so the policy loss moves only the policy (docs/design.md §3.3, DDP-safe).

Batch format (time-major): obs [H+1, B, *obs_shape], action [H, B, A], reward [H, B, 1],
optional terminated [H, B, 1] (default zeros: DMC never terminates) and task [B] (long).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ldmpc.math_utils import soft_ce
from ldmpc.world_model import task_discount

if TYPE_CHECKING:
    from ldmpc.config import Config

Batch = dict[str, torch.Tensor]


class RunningScale(nn.Module):
    """EMA of the 5th-95th percentile range of Q (at least 1): normalises the policy objective.

    Dividing Q by a slowly moving scale makes entropy_coef and lr task-independent. `compute`
    returns the candidate new value without committing it, so a skipped (non-finite) update
    leaves the scale untouched; `commit` stores it.
    """

    def __init__(self, tau: float) -> None:
        super().__init__()
        self.tau = tau
        self.register_buffer("value", torch.ones(1))
        self.register_buffer("percentiles", torch.tensor([0.05, 0.95]))

    @torch.no_grad()
    def compute(self, x: torch.Tensor) -> torch.Tensor:
        """Next scale value from a batch of Q-values x [B, 1] (linear-interpolated percentiles)."""
        q = torch.quantile(x.detach().flatten().float(), self.percentiles)
        return torch.lerp(self.value, (q[1] - q[0]).clamp(min=1.0).reshape(1), self.tau)

    @torch.no_grad()
    def commit(self, value: torch.Tensor) -> None:
        self.value.copy_(value)


def _rho_weights(cfg: Config, n: int, like: torch.Tensor) -> torch.Tensor:
    """[n] weights rho^t: later (less accurate) rollout steps count less."""
    return cfg.rho ** torch.arange(n, device=like.device, dtype=like.dtype)


@torch.no_grad()
def td_target(
    model: Any,
    next_z: torch.Tensor,
    reward: torch.Tensor,
    terminated: torch.Tensor,
    cfg: Config,
    task: torch.Tensor | None = None,
) -> torch.Tensor:
    """r + discount * (1 - terminated) * min of two random target Qs at (z', pi(z'))."""
    action, _ = model.pi(next_z, task)
    q = model.Q(next_z, action, task, return_type="min", target=True)
    return reward + task_discount(model, task, cfg) * (1.0 - terminated) * q


def world_model_loss(
    model: Any, batch: Batch, cfg: Config
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Consistency + reward + value losses over an H-step latent rollout.

    Returns (weighted loss, metrics, zs [H+1, B, L] with gradient) so that the policy loss can
    reuse the rollout latents (detached) without a second encoder/dynamics pass.
    """
    H = cfg.horizon  # the batch may hold a longer window (multi-scale diffusion): its head
    obs, action, reward = batch["obs"][: H + 1], batch["action"][:H], batch["reward"][:H]
    task = batch.get("task")
    terminated = batch.get("terminated")
    terminated = torch.zeros_like(reward) if terminated is None else terminated[:H]
    with torch.no_grad():
        window_z = model.encode(batch["obs"][1:], task)  # [W, B, L]
        next_z = window_z[:H]
        td = td_target(model, next_z, reward, terminated, cfg, task)

    z = model.encode(obs[0], task)
    rho = _rho_weights(cfg, H, reward)
    if model.diffusion_dynamics:
        zs_t, diffusion = _diffusion_rollout(
            model, z, batch["action"], window_z, rho, cfg, task, batch.get("span")
        )
    else:
        zs = [z]
        for t in range(H):
            z = model.next(z, action[t], task)
            zs.append(z)
        zs_t = torch.stack(zs)  # [H+1, B, L]

    # Per-step means first, then the rho-weighted sum over steps, normalised by H (as TD-MPC2).
    consistency = (F.mse_loss(zs_t[1:], next_z, reduction="none").mean(dim=(1, 2)) * rho).sum()
    reward_ce = soft_ce(model.reward(zs_t[:-1], action, task), reward, *_bins(cfg))
    reward_loss = (reward_ce.mean(dim=(1, 2)) * rho).sum()
    qs = model.Q(zs_t[:-1], action, task, return_type="all")  # [num_q, H, B, bins]
    value_ce = soft_ce(qs, td.unsqueeze(0).expand(qs.shape[0], -1, -1, -1), *_bins(cfg))
    value_loss = (value_ce.mean(dim=(2, 3)).sum(0) * rho).sum() / qs.shape[0]

    consistency, reward_loss, value_loss = consistency / H, reward_loss / H, value_loss / H
    loss = (
        cfg.consistency_coef * consistency
        + cfg.reward_coef * reward_loss
        + cfg.value_coef * value_loss
    )
    metrics = {
        "consistency_loss": consistency.detach(),
        "reward_loss": reward_loss.detach(),
        "value_loss": value_loss.detach(),
    }
    if model.diffusion_dynamics:
        loss = loss + cfg.diffusion_coef * diffusion
        metrics["diffusion_loss"] = diffusion.detach()
    metrics["wm_loss"] = loss.detach()
    return loss, metrics, zs_t


def _diffusion_rollout(
    model: Any,
    z: torch.Tensor,
    window_action: torch.Tensor,
    window_z: torch.Tensor,
    rho: torch.Tensor,
    cfg: Config,
    task: torch.Tensor | None,
    span: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """dynamics=diffusion: the latents z_1..z_H the planner would generate (one sampler pass
    from fresh noise at scale 1, with gradient: consistency, reward and value losses read them
    exactly as they read the mlp rollout) and the denoising loss against the encoder latents
    window_z [W, B, L] of the replay window.

    Scale rule: item b trains at a scale drawn uniformly among the scales s of `cfg.scales`
    whose window fits in its episode, s * H <= span[b] (span [B]: the real steps of the replay
    window, whose tail past the episode end is padding; absent: every window is whole). Scales
    ascend from 1 and span >= H, so the fitting scales are a non-empty prefix and scale 1 always
    fits. A fixed-shape draw: no host sync.

    Returns (zs [H+1, B, L], denoising loss). Both terms train the denoiser and, through z_0,
    the encoder.
    """
    H, B = cfg.horizon, z.shape[0]
    cond = model.task_emb(z, task)
    acts = window_action.transpose(0, 1)  # [B, W, A]
    noise = torch.randn(B, H, z.shape[-1], device=z.device, dtype=z.dtype)
    dyn = model._diff_dynamics
    generated = dyn.generate(cond, acts[:, :H], noise)  # [B, H, L]
    scales = torch.tensor(list(cfg.scales), device=z.device)
    if span is None:
        fits = torch.full((B,), len(scales), device=z.device)
    else:
        fits = (scales * H <= span.to(z.device)[:, None]).sum(1).clamp(min=1)  # [B]
    pick = (torch.rand(B, device=z.device) * fits).long()
    scale = scales[torch.minimum(pick, fits - 1)]
    diffusion = dyn.loss(cond, acts, window_z.transpose(0, 1), scale, token_weight=rho)
    return torch.cat([z.unsqueeze(0), generated.transpose(0, 1)]), diffusion


def proposal_loss(
    model: Any, z: torch.Tensor, batch: Batch, cfg: Config
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Denoising loss of the diffusion action proposals on the replayed action sequences,
    conditioned on the detached first latent z [B, L]."""
    cond = model.task_emb(z.detach(), batch.get("task"))
    loss = model._proposals.loss(cond, batch["action"][: cfg.horizon].transpose(0, 1))
    return cfg.proposal_coef * loss, {"proposal_loss": loss.detach()}


def _bins(cfg: Config) -> tuple[int, float, float]:
    return cfg.num_bins, cfg.vmin, cfg.vmax


def policy_loss(
    model: Any,
    zs: torch.Tensor,
    cfg: Config,
    scale: RunningScale,
    task: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Maximise Q/scale + entropy_coef * scaled entropy over detached latents zs [T, B, L].

    Q is read through detached parameters so only the policy receives gradient. Returns
    (loss, metrics, new scale value); the caller commits the scale only if the update is kept.
    """
    zs = zs.detach()
    action, info = model.pi(zs, task)
    q = model.Q(zs, action, task, return_type="avg", detach=True)  # [T, B, 1]
    new_scale = scale.compute(q[0])
    q = q / new_scale
    rho = _rho_weights(cfg, zs.shape[0], q)
    objective = (cfg.entropy_coef * info["scaled_entropy"] + q).mean(dim=(1, 2))
    loss = -(objective * rho).mean()
    metrics = {
        "pi_loss": loss.detach(),
        "pi_entropy": info["entropy"].detach().mean(),
        "pi_scaled_entropy": info["scaled_entropy"].detach().mean(),
        "pi_log_std": info["log_std"].detach().mean(),
        "pi_scale": new_scale.detach().squeeze(),
    }
    return loss, metrics, new_scale


def total_loss(
    model: Any, batch: Batch, cfg: Config, scale: RunningScale
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """World-model loss + policy loss as one scalar for one backward pass.

    Returns (loss, metrics, new scale value to commit after a successful step).
    """
    wm, metrics, zs = world_model_loss(model, batch, cfg)
    pi, pi_metrics, new_scale = policy_loss(model, zs, cfg, scale, batch.get("task"))
    loss = wm + pi
    if model.diffusion_proposals:
        prop, prop_metrics = proposal_loss(model, zs[0], batch, cfg)
        loss = loss + prop
        metrics.update(prop_metrics)
    return loss, {**metrics, **pi_metrics, "total_loss": loss.detach()}, new_scale
