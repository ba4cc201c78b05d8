"""The denoising (score-matching) training loss of a preconditioned denoiser."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ldmpc.diffusion.schedule import EDMSchedule


def denoising_loss(
    schedule: EDMSchedule,
    net: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    sigma: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    token_weight: torch.Tensor | None = None,
    **net_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted denoising MSE and the predicted clean sample D (with gradient).

    x0 [..., T, D]: clean samples (e.g. stop-gradient encoder targets); one sigma per sequence
    (x0.shape[:-2]) from `schedule.train_sigmas` unless given; noise ~ N(0, I) like x0 unless
    given. loss = mean over sequences, tokens and features of
    lambda(sigma) * token_weight[t] * (D(x0 + sigma n; sigma) - x0)^2, with lambda = 1 / c_out^2
    (unit weight on the network's own regression error). token_weight [T] (e.g. rho^t) is
    averaged over t like TD-MPC2's per-step losses. net_kwargs (cond, tokens, scale) go to `net`.
    The returned D lets the caller add a term on the projected sample (e.g. SimNorm(D) vs z).
    """
    lead = x0.shape[:-2]
    if sigma is None:
        sigma = schedule.train_sigmas(lead, generator, device=x0.device, dtype=x0.dtype)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x = x0 + sigma[..., None, None] * noise
    denoised = schedule.denoise(net, x, sigma, **net_kwargs)
    err = (denoised - x0).square().mean(dim=-1)  # [..., T]
    if token_weight is not None:
        err = err * token_weight
    loss = (schedule.loss_weight(sigma)[..., None] * err).mean()
    return loss, denoised
