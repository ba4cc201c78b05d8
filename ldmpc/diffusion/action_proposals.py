"""Diffusion action proposals (`proposal=diffusion|both`): z_0 -> a_0..a_{H-1} candidates.

A denoiser over action sequences, conditioned on the current latent (and task), trained on the
replayed action subsequences, i.e. on what the planner chose. At plan time it draws
`num_diffusion_proposals` sequences per env, in the same batched call for all envs, and they
join the MPPI pool (or are the whole pool of `planner=ssr`). The latent is detached for this
loss, as for the policy prior: proposals imitate the planner, they do not shape the encoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ldmpc.diffusion.denoiser import TransformerDenoiser, denoiser_size
from ldmpc.diffusion.losses import denoising_loss
from ldmpc.diffusion.sampler import sample
from ldmpc.diffusion.schedule import EDMSchedule

if TYPE_CHECKING:
    from ldmpc.config import Config

ACTION_SIGMA_DATA = 0.5  # RMS of actions in [-1, 1] chosen by a planner (often near the bounds)
# Proposals must stay diverse: from sigma_max = 80 a few-step sampler lands every draw on the
# conditional mean (near-copies). Starting at 3 (actions live in [-1, 1]) with 2 steps keeps the
# draws spread over the modes: an exact denoiser on two-mode data put ~91% of 2-step samples
# within 0.1 of a mode from sigma_max 3, 0% from 80 (tests/test_diffusion.py).
ACTION_SIGMA_MAX = 3.0


class ActionProposals(nn.Module):
    """Non-causal transformer denoiser over H action tokens conditioned on z_0 (+ task)."""

    def __init__(self, cfg: Config, cond_extra: int = 0) -> None:
        super().__init__()
        self.schedule = EDMSchedule(
            sigma_data=ACTION_SIGMA_DATA,
            sigma_max=ACTION_SIGMA_MAX,
            target=cfg.diffusion_target,
            grid_steps=max(3, cfg.proposal_steps),
        )
        self.method = cfg.diffusion_sampler
        self.net = TransformerDenoiser(
            x_dim=cfg.action_dim,
            cond_dim=cfg.latent_dim + cond_extra,
            max_tokens=cfg.horizon,
            size=denoiser_size(cfg.mlp_dim),
        )
        self.register_buffer(
            "sigmas", self.schedule.sampling_sigmas(cfg.proposal_steps), persistent=False
        )

    def generate(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Action sequences [..., P, H, A] in [-1, 1]: cond [..., 1, C], noise [..., P, H, A]."""

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return self.schedule.denoise(self.net, x, sigma, cond=cond)

        return sample(denoise, noise, self.sigmas, self.method).clamp(-1.0, 1.0)

    def loss(self, cond: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Denoising loss of replayed action sequences: cond [B, C] (detached), actions
        [B, H, A]."""
        loss, _ = denoising_loss(self.schedule, self.net, actions, cond=cond.detach())
        return loss
