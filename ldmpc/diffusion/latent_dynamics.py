"""Diffusion latent dynamics (`dynamics=diffusion`): z_0 + a_0..a_{H-1} -> z_1..z_H at once.

The denoiser generates the whole latent trajectory in `diffusion_steps` deterministic sampler
calls instead of H sequential MLP steps. It is causal (token t, the latent z_{t+1}, attends only
to tokens <= t and so never depends on later actions), which lets the planner roll the policy
prior out autoregressively with the same network (`generate` on a growing action prefix gives
the same latents as the full sequence).

Latents live on the SimNorm simplex (groups of `simnorm_dim` that sum to 1). The diffusion runs
on centred latents (z - 1/simnorm_dim, RMS about 0.3 = sigma_data) and the sample is mapped back
onto the simplex by `to_simplex`: clip negatives, renormalise each group. That is a projection
for the near-simplex vectors a trained denoiser produces, costs two elementwise passes, and keeps
the reward and Q heads on the same inputs they see with mlp dynamics.

`diffusion_residual=true` (the default) diffuses the change z_t - z_0 instead of z_t, with its
own sigma_data (`RESIDUAL_SIGMA_DATA`). Why: a latent moves little per step (cartpole-swingup at
30k: mean squared change 7.3e-5 per dim against a per-dim variance of 1.3e-2), so a denoiser
that must rebuild z_t from its conditioning through the transformer leaves an error floor above
the change it should predict: trained in RL that way (`diffusion_residual=false`, the only mode
before), its 1-step error was 9.0e-5, worse than copying z_0 (7.3e-5) and 20x the MLP's 4.2e-6.
With the residual, z_0 passes through unchanged and the network predicts only the change.
Trained offline for 1000 updates on the same replay and frozen encoder, 1-step / H-step error:
direct 2.0e-4 / 2.9e-4, residual 1.05e-5 / 5.1e-5, MLP 1.35e-5 / 3.5e-5.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ldmpc.diffusion.denoiser import TransformerDenoiser, denoiser_size
from ldmpc.diffusion.losses import denoising_loss
from ldmpc.diffusion.sampler import sample
from ldmpc.diffusion.schedule import EDMSchedule
from ldmpc.diffusion.tokens import action_tokens

if TYPE_CHECKING:
    from ldmpc.config import Config

SIMPLEX_SIGMA_DATA = 0.3  # RMS of centred SimNorm latents (groups of 8, typical sharpness)
# z_t - z_0 RMS: 0.007 / 0.012 / 0.018 at t = 1 / 2 / 3 on cartpole-swingup; set above that to
# cover coarse scales (up to 12 steps ahead) and faster tasks
RESIDUAL_SIGMA_DATA = 0.05


def to_simplex(x: torch.Tensor, group: int, eps: float = 1e-6) -> torch.Tensor:
    """Map [..., L] onto the product of simplices of `group` entries (nonnegative, sum 1)."""
    g = x.clamp(min=0.0).add(eps).unflatten(-1, (-1, group))
    return (g / g.sum(-1, keepdim=True)).flatten(-2)


class DiffusionDynamics(nn.Module):
    """Causal transformer denoiser over H latent tokens, conditioned on z_0 (+ task) and actions."""

    def __init__(self, cfg: Config, cond_extra: int = 0) -> None:
        super().__init__()
        L, A, H = cfg.latent_dim, cfg.action_dim, cfg.horizon
        self.group, self.horizon = cfg.simnorm_dim, H
        self.max_scale = max(cfg.scales)
        self.steps, self.method = cfg.diffusion_steps, cfg.diffusion_sampler
        self.residual, self.latent_dim = bool(cfg.diffusion_residual), L
        self.schedule = EDMSchedule(
            sigma_data=RESIDUAL_SIGMA_DATA if self.residual else SIMPLEX_SIGMA_DATA,
            target=cfg.diffusion_target,
            grid_steps=max(3, cfg.diffusion_steps),  # train at every level the sampler visits
        )
        self.net = TransformerDenoiser(
            x_dim=L,
            cond_dim=L + cond_extra,
            token_dim=A * self.max_scale,  # a token carries the s actions it spans
            max_tokens=H,
            size=denoiser_size(cfg.mlp_dim),
            max_scale=self.max_scale,
            causal=True,
        )
        self.register_buffer(
            "sigmas", self.schedule.sampling_sigmas(cfg.diffusion_steps), persistent=False
        )

    def _origin(self, cond: torch.Tensor) -> torch.Tensor | float:
        """What the diffused variable is measured from: z_0 [..., 1, L] (the first L entries of
        cond) with `diffusion_residual`, else the simplex centre 1/group (a scalar)."""
        if self.residual:
            return cond[..., None, : self.latent_dim]
        return 1.0 / self.group

    def generate(
        self, cond: torch.Tensor, actions: torch.Tensor, noise: torch.Tensor, scale: int = 1
    ) -> torch.Tensor:
        """Latents [..., T, L] on the simplex, token t being the latent scale * (t + 1) steps
        ahead.

        cond [..., C]: z_0 (with the task embedding appended when multitask); actions
        [..., T * scale, A] with T <= horizon; noise [..., H, L] standard normal, pre-drawn (its
        first T tokens are used). Leading dims broadcast: z_0 [E, 1, C] and one noise draw per
        env [E, 1, H, L] serve N candidates' actions [E, N, T, A].
        """
        T = actions.shape[-2] // scale
        tokens = action_tokens(actions, scale, T, self.max_scale)

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return self.schedule.denoise(self.net, x, sigma, cond=cond, tokens=tokens, scale=scale)

        x = sample(denoise, noise[..., :T, :], self.sigmas, self.method)
        return to_simplex(x + self._origin(cond), self.group)

    def loss(
        self,
        cond: torch.Tensor,
        actions: torch.Tensor,
        targets: torch.Tensor,
        scale: torch.Tensor,
        token_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoising loss of the trajectory at each item's scale.

        cond [B, C]; actions [B, W, A] and targets [B, W, L] (stop-gradient encoder latents of
        o_1..o_W) over the whole replay window W = horizon * max(scales); scale [B] long: item b
        is trained on the latents scale_b, 2 scale_b, ..., horizon * scale_b steps ahead, and
        reads only the first horizon * scale_b steps of its window. A window whose tail is
        padding (it runs past its episode's end) must get a scale that fits in its real steps:
        the caller's rule (`ldmpc.losses._diffusion_rollout`).
        """
        H = self.horizon
        idx = scale[:, None] * torch.arange(1, H + 1, device=scale.device) - 1  # [B, H]
        x0 = targets.gather(1, idx[..., None].expand(-1, -1, targets.shape[-1]))
        tokens = action_tokens(actions, scale, H, self.max_scale)
        loss, _ = denoising_loss(
            self.schedule,
            self.net,
            x0.detach() - self._origin(cond.detach()),
            token_weight=token_weight,
            cond=cond,
            tokens=tokens,
            scale=scale if self.max_scale > 1 else None,
        )
        return loss
