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
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ldmpc.diffusion.denoiser import TransformerDenoiser, denoiser_size
from ldmpc.diffusion.losses import denoising_loss
from ldmpc.diffusion.sampler import sample
from ldmpc.diffusion.schedule import EDMSchedule

SIMPLEX_SIGMA_DATA = 0.3  # RMS of centred SimNorm latents (groups of 8, typical sharpness)


def to_simplex(x: torch.Tensor, group: int, eps: float = 1e-6) -> torch.Tensor:
    """Map [..., L] onto the product of simplices of `group` entries (nonnegative, sum 1)."""
    g = x.clamp(min=0.0).add(eps).unflatten(-1, (-1, group))
    return (g / g.sum(-1, keepdim=True)).flatten(-2)


class DiffusionDynamics(nn.Module):
    """Causal transformer denoiser over H latent tokens, conditioned on z_0 (+ task) and actions."""

    def __init__(self, cfg: Any, cond_extra: int = 0) -> None:
        super().__init__()
        L, A, H = cfg.latent_dim, cfg.action_dim, cfg.horizon
        self.group = cfg.simnorm_dim
        self.steps, self.method = cfg.diffusion_steps, cfg.diffusion_sampler
        self.schedule = EDMSchedule(
            sigma_data=SIMPLEX_SIGMA_DATA,
            target=cfg.diffusion_target,
            grid_steps=max(3, cfg.diffusion_steps),  # train at every level the sampler visits
        )
        self.net = TransformerDenoiser(
            x_dim=L,
            cond_dim=L + cond_extra,
            token_dim=A,
            max_tokens=H,
            size=denoiser_size(cfg.mlp_dim),
            causal=True,
        )
        self.register_buffer(
            "sigmas", self.schedule.sampling_sigmas(cfg.diffusion_steps), persistent=False
        )

    def _center(self, z: torch.Tensor) -> torch.Tensor:
        return z - 1.0 / self.group

    def generate(
        self, cond: torch.Tensor, actions: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Latents z_1..z_T [..., T, L] on the simplex.

        cond [..., C]: z_0 (with the task embedding appended when multitask); actions
        [..., T, A] with T <= horizon; noise [..., H, L] standard normal, pre-drawn (its first
        T tokens are used). Leading dims broadcast: z_0 [E, 1, C] and one noise draw per env
        [E, 1, H, L] serve N candidates' actions [E, N, T, A].
        """

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return self.schedule.denoise(self.net, x, sigma, cond=cond, tokens=actions)

        x = sample(denoise, noise[..., : actions.shape[-2], :], self.sigmas, self.method)
        return to_simplex(x + 1.0 / self.group, self.group)

    def loss(
        self,
        cond: torch.Tensor,
        actions: torch.Tensor,
        targets: torch.Tensor,
        token_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoising loss of the trajectory: cond [B, C], actions [B, T, A], targets [B, T, L]
        (stop-gradient encoder latents of the replayed observations)."""
        loss, _ = denoising_loss(
            self.schedule,
            self.net,
            self._center(targets.detach()),
            token_weight=token_weight,
            cond=cond,
            tokens=actions,
        )
        return loss
