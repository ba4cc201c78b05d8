"""EDM noise schedule and denoiser parameterization (x0 or v), as pure tensor math.

Noising is variance-exploding: x = x0 + sigma * n, n ~ N(0, I). A network F never sees x or sigma
raw: the preconditioned denoiser is D(x; sigma) = c_skip x + c_out F(c_in x, c_noise), which keeps
F's input and regression target at unit scale for every sigma. `target` picks how F's output is
read: "v" (EDM's own choice; in variance-preserving coordinates its target is the v of
v-prediction up to sign) or "x0" (F predicts the clean sample, scaled by sigma_data). Samplers
only see D, so they work unchanged for both. See the package docstring for the formulas.

The schedule is a frozen dataclass of floats: no device, no state, picklable into configs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

TARGETS = ("v", "x0")


class Precond(NamedTuple):
    """Preconditioning coefficients at some sigma (each shaped like sigma)."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


@dataclass(frozen=True)
class EDMSchedule:
    """Noise levels, preconditioning, training-sigma distribution and loss weight.

    sigma_data: RMS of the (roughly zero-mean) data; sigma_min/sigma_max/rho: the Karras sampling
    ramp; p_mean/p_std: log-normal training sigmas; target: "v" | "x0" (config `diffusion_target`).
    grid_frac: share of training sigmas drawn from the sampling grids of 1..grid_steps steps.
    Few-step samplers query D only at those levels (sigma_max above all, where a standard
    log-normal almost never trains), so training puts explicit mass on them.
    """

    sigma_data: float = 0.5
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    p_mean: float = -1.2
    p_std: float = 1.2
    target: str = "v"
    grid_frac: float = 0.5
    grid_steps: int = 3

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"diffusion target={self.target!r}: expected one of {TARGETS}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}"
            )
        for name in ("sigma_data", "rho", "p_std"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be > 0")
        if not 0 <= self.grid_frac <= 1:
            raise ValueError(f"grid_frac={self.grid_frac}: must be in [0, 1]")
        if self.grid_steps < 1:
            raise ValueError(f"grid_steps={self.grid_steps}: must be >= 1")

    # ----------------------------------------------------------------- sampling grid
    def sampling_sigmas(
        self, steps: int, device: Any = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """[steps + 1] decreasing noise levels: sigma_max first, exactly 0 last.

        The first `steps` levels are the Karras ramp over steps + 1 points from sigma_max to
        sigma_min (rho-th-root spacing: dense at low noise); its last point, sigma_min, is
        replaced by 0 so the final step returns D itself. With a plain EDM grid (sigma_min as
        the last nonzero level) a 2-step sampler would waste its second call at sigma_min,
        where D is the identity; here steps=2 gives [80, 2.5, 0] with the defaults.
        """
        if steps < 1:
            raise ValueError(f"diffusion steps={steps}: must be >= 1")
        ramp = self.karras_ramp(steps + 1, device=device, dtype=torch.float64)
        return torch.cat([ramp[:-1], ramp.new_zeros(1)]).to(dtype)  # no scalar copy to a GPU

    def karras_ramp(
        self, n: int, device: Any = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """[n] levels from sigma_max to sigma_min, uniform in sigma^(1/rho) (n >= 2)."""
        t = torch.linspace(0.0, 1.0, n, device=device, dtype=torch.float64)
        hi, lo = self.sigma_max ** (1 / self.rho), self.sigma_min ** (1 / self.rho)
        return (hi + t * (lo - hi)).pow(self.rho).to(dtype)

    def grid_levels(self, device: Any = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Nonzero levels of the 1..grid_steps grids, with repeats.

        Drawing uniformly from this list gives every denoiser call of every sampler length the
        same probability, so sigma_max (the first call of each) gets the most mass. Built on
        `device` directly: a host-to-device copy of a pageable tensor would sync a GPU.
        """
        grids = [
            self.sampling_sigmas(k, device, torch.float64)[:-1]
            for k in range(1, 1 + self.grid_steps)
        ]
        return torch.cat(grids).to(dtype)

    # ----------------------------------------------------------------- parameterization
    def precondition(self, sigma: torch.Tensor) -> Precond:
        """c_skip, c_out, c_in, c_noise at `sigma` (any shape; sigma > 0)."""
        sd2 = self.sigma_data**2
        total = sigma.square() + sd2
        c_in = total.rsqrt()
        c_noise = sigma.log() / 4
        if self.target == "v":
            c_skip = sd2 / total
            c_out = sigma * self.sigma_data * c_in
        else:  # x0: F is the clean sample in units of sigma_data
            c_skip = torch.zeros_like(sigma)
            c_out = torch.full_like(sigma, self.sigma_data)
        return Precond(c_skip, c_out, c_in, c_noise)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = 1 / c_out^2: weights ||D - x0||^2 so F's error counts with weight 1."""
        return self.precondition(sigma).c_out.square().reciprocal()

    def denoise(
        self,
        net: Callable[..., torch.Tensor],
        x: torch.Tensor,
        sigma: torch.Tensor,
        **net_kwargs: Any,
    ) -> torch.Tensor:
        """D(x; sigma) = c_skip x + c_out net(c_in x, c_noise, **net_kwargs).

        x [..., T, D]; sigma broadcastable to x's leading dims x.shape[:-2] (a 0-d tensor for a
        sampler step, [B] for a training batch). `net` receives c_noise shaped like sigma, so a
        0-d sigma costs one noise embedding, not one per sequence.
        """
        c = self.precondition(sigma)
        c_skip, c_out, c_in = (v[..., None, None] for v in c[:3])
        return c_skip * x + c_out * net(c_in * x, c.c_noise, **net_kwargs)

    # ----------------------------------------------------------------- training sigmas
    def train_sigmas(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: Any = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Training noise levels: log-normal(p_mean, p_std) clipped to [sigma_min, sigma_max],
        replaced with probability grid_frac by a uniformly drawn sampling-grid level."""
        kw: dict[str, Any] = {"generator": generator, "device": device}
        lognormal = (self.p_mean + self.p_std * torch.randn(shape, **kw)).exp()
        lognormal = lognormal.clamp(self.sigma_min, self.sigma_max)
        levels = self.grid_levels(device, lognormal.dtype)
        pick = levels[torch.randint(len(levels), shape, **kw)]
        use_grid = torch.rand(shape, **kw) < self.grid_frac
        return torch.where(use_grid, pick, lognormal).to(dtype)
