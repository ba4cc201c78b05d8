"""Small tensor functions shared by the world model, losses and planner.

Rewards and values are regressed as distributions over bins in symlog space (two-hot targets,
cross-entropy loss): this keeps one set of hyperparameters working across tasks whose returns
differ by orders of magnitude. All functions are pure and shape-polymorphic over leading dims.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|): compresses large magnitudes, identity-like near zero."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `symlog`."""
    return torch.sign(x) * torch.expm1(x.abs())


def bin_centers(num_bins: int, vmin: float, vmax: float, like: torch.Tensor) -> torch.Tensor:
    """The `num_bins` support points in symlog space, on `like`'s device and dtype."""
    return torch.linspace(vmin, vmax, num_bins, device=like.device, dtype=like.dtype)


def two_hot(x: torch.Tensor, num_bins: int, vmin: float, vmax: float) -> torch.Tensor:
    """Scalars [..., 1] -> soft two-hot targets [..., num_bins] over symlog bins.

    The mass is split between the two neighbouring bins so that the expectation of the bins under
    the target equals symlog(x) exactly (after clipping to [vmin, vmax]).
    """
    bin_size = (vmax - vmin) / (num_bins - 1)
    pos = (symlog(x).clamp(vmin, vmax) - vmin) / bin_size  # in [0, num_bins - 1]
    # x == vmax puts all mass on the last bin; a NaN x gets a valid index and a NaN weight, so
    # a bad batch yields a NaN loss (skipped by the agent) instead of an indexing crash.
    lo = torch.nan_to_num(pos, nan=0.0).floor().clamp(0, num_bins - 2)
    frac = pos - lo
    lo = lo.long()
    out = torch.zeros(*x.shape[:-1], num_bins, device=x.device, dtype=x.dtype)
    out.scatter_(-1, lo, 1.0 - frac)
    out.scatter_(-1, lo + 1, frac)
    return out


def two_hot_inv(logits: torch.Tensor, num_bins: int, vmin: float, vmax: float) -> torch.Tensor:
    """Logits [..., num_bins] -> scalar [..., 1]: symexp of the expected bin under the softmax
    (in fp32 whatever the logits' precision: ldmpc.precision)."""
    logits = logits.float()
    probs = F.softmax(logits, dim=-1)
    centers = bin_centers(num_bins, vmin, vmax, logits)
    return symexp((probs * centers).sum(-1, keepdim=True))


def soft_ce(
    logits: torch.Tensor, target: torch.Tensor, num_bins: int, vmin: float, vmax: float
) -> torch.Tensor:
    """Cross-entropy [..., 1] of logits [..., num_bins] against two-hot(target [..., 1]), in
    fp32 whatever the logits' precision (ldmpc.precision)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    target = two_hot(target.float(), num_bins, vmin, vmax)
    return -(target * log_probs).sum(-1, keepdim=True)


def gaussian_logprob(eps: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(mean + eps * std; mean, std) summed over the last dim -> [..., 1]."""
    return (-0.5 * eps.pow(2) - log_std - _LOG_SQRT_2PI).sum(-1, keepdim=True)


def squash(
    mean: torch.Tensor, sample: torch.Tensor, log_prob: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tanh-squash mean and sample into [-1, 1] and correct the sample's log-prob (Jacobian)."""
    mean = torch.tanh(mean)
    sample = torch.tanh(sample)
    log_det = torch.log(F.relu(1 - sample.pow(2)) + 1e-6).sum(-1, keepdim=True)
    return mean, sample, log_prob - log_det


def bounded_log_std(raw: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Map an unbounded output smoothly into [lo, hi] (tanh), so the policy std never explodes."""
    return lo + 0.5 * (hi - lo) * (torch.tanh(raw) + 1)
