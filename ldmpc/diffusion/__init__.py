"""Diffusion building blocks: EDM schedule, few-step samplers, transformer denoiser, loss.

Pure torch (no Ray, no envs). Everything works on [..., T, D] tensors: any leading batch dims,
T tokens (one per future step), D features.

## The math, in our words

*Noising.* A clean sample x0 is corrupted as x = x0 + sigma * n with n ~ N(0, I) and a
continuous noise level sigma ("variance exploding"). The data is assumed roughly zero-mean
with per-feature RMS sigma_data (center and pick sigma_data accordingly).

*Denoiser and preconditioning.* A network F is wrapped as
D(x; sigma) = c_skip(sigma) * x + c_out(sigma) * F(c_in(sigma) * x, c_noise(sigma)), so that
F's input and regression target have unit scale at every noise level:
c_in = 1 / sqrt(sigma^2 + sigma_data^2), c_noise = ln(sigma) / 4, and, by `diffusion_target`,
- "v" (EDM's choice): c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),
  c_out = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2). F's target is
  (x0 - c_skip x) / c_out = b * x0 / sigma_data - a * n with a = sigma_data / sqrt(sigma^2 +
  sigma_data^2), b = sigma / sqrt(...), a^2 + b^2 = 1: in the variance-preserving view
  c_in x = a * (x0 / sigma_data) + b * n this is -(a n - b x0 / sigma_data), i.e. the "v" of
  v-prediction up to sign. At low noise D leans on its input, at high noise on F.
- "x0": c_skip = 0, c_out = sigma_data: F predicts the clean sample in units of sigma_data.

*Loss.* lambda(sigma) * ||D(x0 + sigma n; sigma) - x0||^2 with lambda = 1 / c_out^2, which
equals ||F - F_target||^2: every noise level contributes at unit scale (for "x0" this is a plain
MSE scaled by 1 / sigma_data^2). Training sigmas: ln sigma ~ N(p_mean, p_std^2) (EDM: -1.2, 1.2),
but a fraction `grid_frac` of them is drawn from the levels the few-step samplers actually
visit (sigma_max above all, which the log-normal almost never reaches).

*Sampling.* The probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma carries
N(0, sigma_max^2) to the data distribution. The grid for `steps` calls is the Karras ramp
sigma_i = (sigma_max^(1/rho) + i / steps * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
i = 0..steps, with its last point set to 0. One Euler step x <- D + (sigma_next / sigma)(x - D)
(deterministic DDIM) per level; the last step returns D. With 1 step the sample is
D(sigma_max * n; sigma_max), close to the conditional mean of x0: for near-deterministic latent
dynamics that is what the planner wants. Heun (2nd order) is optional.

*Choosing sigma_max and steps.* One step collapses every noise draw onto the conditional mean,
whatever sigma_max (>> sigma_data) is: right for near-deterministic latent dynamics, wrong for
multimodal targets such as action proposals. Those need 2-3 steps and a sigma_max of a few
sigma_data: with exact denoising of data +-1, 2 steps put 0 % / ~55 % / ~91 % of samples within
0.1 of a mode at sigma_max = 80 / 10 / 3 (tests/test_diffusion.py). Set `grid_steps` to the
largest step count used at plan time, so training visits every level the sampler will query.

## Public API

- `EDMSchedule(sigma_data, ..., target)`: `sampling_sigmas(steps)`, `precondition(sigma)`,
  `denoise(net, x, sigma, **cond)`, `loss_weight(sigma)`, `train_sigmas(shape, generator)`.
- `sample(denoise, noise, sigmas, method)`: deterministic sampler; `noise` is pre-drawn.
- `TransformerDenoiser(x_dim, cond_dim, token_dim, ..., size, max_scale, causal)` and
  `denoiser_size(mlp_dim)`.
- `denoising_loss(schedule, net, x0, generator=..., token_weight=..., **cond) -> (loss, D)`.
- `action_tokens(actions, scale, num_tokens, max_scale)`: multi-scale per-token actions.
"""

from ldmpc.diffusion.denoiser import DenoiserSize, TransformerDenoiser, denoiser_size
from ldmpc.diffusion.losses import denoising_loss
from ldmpc.diffusion.sampler import METHODS, sample
from ldmpc.diffusion.schedule import TARGETS, EDMSchedule, Precond
from ldmpc.diffusion.tokens import action_tokens

__all__ = [
    "METHODS",
    "TARGETS",
    "DenoiserSize",
    "EDMSchedule",
    "Precond",
    "TransformerDenoiser",
    "action_tokens",
    "denoiser_size",
    "denoising_loss",
    "sample",
]
