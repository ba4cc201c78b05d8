"""Deterministic few-step samplers of the probability-flow ODE dx/dsigma = (x - D) / sigma.

Euler on this ODE in sigma is exactly deterministic DDIM (eta = 0) written in EDM's
variance-exploding coordinates: x_next = D + (sigma_next / sigma) (x - D), i.e. keep the predicted
clean sample and rescale the predicted noise to the next level. A final level of 0 makes the
last step return D. Heun adds a second evaluation per step except the last (2 * steps - 1 calls).

All randomness is the caller's `noise`, drawn before planning, and the step count is the static
length of `sigmas`: no data-dependent Python branches, no host syncs, so a batched call equals
per-item calls and the loop unrolls under torch.compile.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METHODS = ("euler", "heun")


def sample(
    denoise: Denoise, noise: torch.Tensor, sigmas: torch.Tensor, method: str = "euler"
) -> torch.Tensor:
    """Integrate from sigmas[0] * noise down to sigmas[-1] (= 0): the generated x0 [..., T, D].

    denoise(x, sigma) -> D(x; sigma), called with a 0-d sigma (e.g. a closure over
    `EDMSchedule.denoise` with the conditioning); noise: standard normal [..., T, D], may have
    size-1 dims that broadcast against the conditioning (e.g. one draw per env shared by its
    candidates); sigmas: [steps + 1] from `EDMSchedule.sampling_sigmas`, last entry 0.
    """
    if method not in METHODS:
        raise ValueError(f"sampler method={method!r}: expected one of {METHODS}")
    n = sigmas.shape[0] - 1
    x = noise * sigmas[0]
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d0 = denoise(x, sigma)
        x_next = euler_step(x, d0, sigma, sigma_next)
        if method == "heun" and i < n - 1:  # static: the last level is 0, where Heun is undefined
            d1 = denoise(x_next, sigma_next)
            x_next = heun_step(x, x_next, d0, d1, sigma, sigma_next)
        x = x_next
    return x


def euler_step(
    x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """x_next = D + (sigma_next / sigma) (x - D) (= DDIM with eta 0)."""
    return denoised + (sigma_next / sigma) * (x - denoised)


def heun_step(
    x: torch.Tensor,
    x_euler: torch.Tensor,
    d0: torch.Tensor,
    d1: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
) -> torch.Tensor:
    """Trapezoidal correction: average the ODE slopes at both ends of the step (sigma_next > 0);
    d1 = D(x_euler; sigma_next) at the Euler prediction."""
    slope0 = (x - d0) / sigma
    slope1 = (x_euler - d1) / sigma_next
    return x + (sigma_next - sigma) * 0.5 * (slope0 + slope1)
