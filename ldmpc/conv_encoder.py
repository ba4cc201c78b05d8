"""The encoder of pixel observations (`obs=rgb`): TD-MPC2's 4-layer conv net ending in SimNorm.

Input: uint8 frame stacks [..., 3 * frames, 64, 64] (`ldmpc.envs.pixels`), kept as uint8 all the
way from the env through replay to here, where they become floats in [-0.5, 0.5].

Architecture (TD-MPC2's): conv 7x7 stride 2, 5x5 stride 2, 3x3 stride 2, 3x3 stride 1, each
`num_channels` wide with ReLU between them, flattened: 64x64 -> 29 -> 13 -> 6 -> 4, so
16 * num_channels features (512 at the default 32). TD-MPC2 applies SimNorm to those features
directly, which only fits latent_dim = 512 (model_size 5). For any other latent_dim a normed
linear layer maps the features to latent_dim before SimNorm, so every model size works.

Augmentation: a random shift of up to `pad` pixels per image (replicate-padded), as DrQ and
TD-MPC2 (pad 3). Here it is applied in training mode only (`model.train()`, i.e. the world-model
update, including the TD-target encoding), so acting and evaluation see the true frame and are
deterministic. TD-MPC2 also shifts the frames it plans from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ldmpc.nets import NormedLinear, SimNorm

if TYPE_CHECKING:
    from ldmpc.config import Config

SHIFT_PAD = 3  # TD-MPC2's ShiftAug default
# (kernel, stride) of each conv layer, TD-MPC2's layout for 64 x 64 frames
CONV_LAYERS = ((7, 2), (5, 2), (3, 2), (3, 1))


def random_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Shift each image of x [N, C, H, W] (any dtype) by its own random offset in [-pad, pad]^2.

    Pixels beyond the border repeat the edge (clamped indices: replicate padding without a
    padded copy); integer shifts, so no interpolation. The result is channels-last in memory,
    the layout the convolutions prefer anyway.
    """
    n, _, h, w = x.shape
    offsets = torch.randint(-pad, pad + 1, (2, n, 1), device=x.device)
    rows = (torch.arange(h, device=x.device) + offsets[0]).clamp_(0, h - 1)  # [N, H]
    cols = (torch.arange(w, device=x.device) + offsets[1]).clamp_(0, w - 1)  # [N, W]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return x[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # [N, H, W, C]


def conv_output_size(size: int) -> int:
    """Side length of the feature map after CONV_LAYERS (no padding)."""
    for kernel, stride in CONV_LAYERS:
        size = (size - kernel) // stride + 1
    if size < 1:
        raise ValueError(f"frames too small for the conv encoder (need >= 29 px): got {size}")
    return size


class PixelEncoder(nn.Module):
    """uint8 frame stacks [..., C, H, W] -> SimNorm latents [..., latent_dim]."""

    def __init__(
        self,
        obs_shape: tuple[int, ...] | list[int],
        num_channels: int,
        latent_dim: int,
        simnorm_dim: int,
        pad: int = SHIFT_PAD,
    ) -> None:
        super().__init__()
        if len(obs_shape) != 3:
            raise ValueError(f"pixel observations must be [C, H, W], got shape {list(obs_shape)}")
        c, h, w = (int(d) for d in obs_shape)
        self.pad = pad
        layers: list[nn.Module] = []
        for i, (kernel, stride) in enumerate(CONV_LAYERS):
            layers.append(nn.Conv2d(c if i == 0 else num_channels, num_channels, kernel, stride))
            layers.append(nn.ReLU() if i < len(CONV_LAYERS) - 1 else nn.Flatten())
        self.convs = nn.Sequential(*layers)
        features = num_channels * conv_output_size(h) * conv_output_size(w)
        if features == latent_dim:  # TD-MPC2's layout: SimNorm on the conv features
            self.head: nn.Module = SimNorm(simnorm_dim)
        else:
            self.head = NormedLinear(features, latent_dim, act=SimNorm(simnorm_dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        lead = obs.shape[:-3]
        x = obs.reshape(-1, *obs.shape[-3:])
        if self.training and self.pad > 0:
            x = random_shift(x, self.pad)  # on the raw pixels: a quarter of float32's memory
        # Channels-last input: ~40% faster conv forward+backward on CPU (oneDNN), measured on
        # 256 frame stacks; the weights (and their grads) keep the default layout.
        x = x.contiguous(memory_format=torch.channels_last).float().div(255.0).sub_(0.5)
        return self.head(self.convs(x)).reshape(*lead, -1)


def pixel_encoder(cfg: Config) -> PixelEncoder:
    """The world model's encoder for obs=rgb, from the derived config."""
    if cfg.multitask:  # the task embedding is appended to flat observations; TD-MPC2 neither
        raise ValueError("obs=rgb supports single tasks only, got a task set")
    return PixelEncoder(cfg.obs_shape, cfg.num_channels, cfg.latent_dim, cfg.simnorm_dim)
