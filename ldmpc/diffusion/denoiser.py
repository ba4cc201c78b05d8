"""A small pre-norm transformer denoiser over a token sequence (one token per future step).

Conditioning: a per-sequence vector c = embed(c_noise) + proj(cond) + embed(scale s) is added to
every token and drives adaptive LayerNorm (shift, scale, gate per sublayer, zero-initialised, as
in DiT), so each block starts as the identity and the output starts at 0. A per-token input
(e.g. the action a_t of step t) is projected and added to its token, beside a learned position
embedding. c is computed on the conditioning's own leading shape: a planner passing z_0 as
[E, 1, C] against [E, N, T, D] samples pays for E conditioning rows, not E * N.

The network is F of `EDMSchedule.denoise`: it sees the scaled noisy sample c_in * x and c_noise,
and returns F (read as v or x0 by the schedule). Projecting the final sample onto the SimNorm
simplex (or clamping actions) is the caller's step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ldmpc.nets import weight_init


@dataclass(frozen=True)
class DenoiserSize:
    """Transformer sizes; `denoiser_size` derives them from a model_size preset."""

    width: int = 128
    depth: int = 2
    heads: int = 2
    mlp_ratio: int = 2


def denoiser_size(mlp_dim: int) -> DenoiserSize:
    """Width ~ mlp_dim / 3 (multiple of 64, in [128, 1024]), 64-wide heads, depth 2 up to the
    5M preset (mlp_dim <= 512) and 4 above.

    Sized so that one denoiser call over T=3 tokens costs about as much as TD-MPC2's three MLP
    dynamics steps (measured on a CPU, 1 thread: 0.7-1.3x at sizes 1 and 5, see
    `python -m ldmpc.diffusion.bench`): size 1 -> 128 wide, 5 -> 192, 19 -> 320, 48 -> 576,
    317 -> 1024.
    """
    width = min(max(64 * round(mlp_dim / 192), 128), 1024)
    return DenoiserSize(width=width, depth=2 if mlp_dim <= 512 else 4, heads=width // 64)


class TransformerDenoiser(nn.Module):
    """F(x_in [..., T, x_dim], c_noise, cond, tokens, scale) -> [..., T, out_dim].

    x_dim: size of the generated vectors; cond_dim: per-sequence conditioning (0: none);
    token_dim: per-token conditioning (0: none); max_tokens: longest sequence; max_scale:
    largest temporal scale s (1: no scale input); causal: token t attends only to tokens <= t
    (latent dynamics, so z_t never depends on later actions); noise_freqs: sinusoidal
    frequencies of the c_noise embedding.
    """

    def __init__(
        self,
        x_dim: int,
        cond_dim: int = 0,
        token_dim: int = 0,
        out_dim: int | None = None,
        max_tokens: int = 16,
        size: DenoiserSize = DenoiserSize(),  # frozen: safe as a default
        max_scale: int = 1,
        causal: bool = False,
        noise_freqs: int = 32,
    ) -> None:
        super().__init__()
        W = size.width
        if W % size.heads:
            raise ValueError(f"width={W} must be divisible by heads={size.heads}")
        self.size, self.max_scale = size, max_scale
        self.in_proj = nn.Linear(x_dim, W)
        self.token_proj = nn.Linear(token_dim, W) if token_dim > 0 else None
        self.cond_proj = nn.Linear(cond_dim, W) if cond_dim > 0 else None
        self.scale_emb = nn.Embedding(max_scale + 1, W) if max_scale > 1 else None
        self.noise_emb = NoiseEmbedding(noise_freqs, W)
        self.pos = nn.Parameter(torch.zeros(max_tokens, W))
        self.blocks = nn.ModuleList(
            AdaLNBlock(W, size.heads, size.mlp_ratio, causal) for _ in range(size.depth)
        )
        self.ada = nn.Linear(W, (6 * size.depth + 2) * W)  # per block 6, final layer 2
        self.out = nn.Linear(W, out_dim if out_dim is not None else x_dim)
        self.apply(weight_init)
        nn.init.trunc_normal_(self.pos, std=0.02)
        for layer in (self.ada, self.out):  # adaLN-zero: identity blocks and F = 0 at init
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        x: torch.Tensor,
        c_noise: torch.Tensor,
        cond: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        scale: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [..., T, x_dim]; tokens [..., T, token_dim]; c_noise [...], cond [..., cond_dim] and
        scale (int, or long tensor [...]; s >= 1, None = 1) with leading dims broadcastable to
        x's. The output's leading dims are the broadcast of all inputs' (x may be [E, 1, T, D]
        against tokens [E, N, T, A])."""
        c = self.conditioning(c_noise, cond, scale).unsqueeze(-2)  # [..., 1, W]
        T = x.shape[-2]
        h = self.in_proj(x) + self.pos[:T]
        if self.token_proj is not None and tokens is not None:
            h = h + self.token_proj(tokens)
        h = h + c
        mods = self.ada(F.silu(c)).chunk(6 * len(self.blocks) + 2, dim=-1)
        for i, block in enumerate(self.blocks):
            h = block(h, mods[6 * i : 6 * i + 6])
        return self.out(modulate(layer_norm(h), mods[-2], mods[-1]))

    def conditioning(
        self, c_noise: torch.Tensor, cond: torch.Tensor | None, scale: int | torch.Tensor | None
    ) -> torch.Tensor:
        """Per-sequence vector [..., W] (leading dims: broadcast of the inputs')."""
        c = self.noise_emb(c_noise)
        if self.cond_proj is not None and cond is not None:
            c = c + self.cond_proj(cond)
        if self.scale_emb is not None:  # an int (or None = 1) picks a row statically
            if scale is None or isinstance(scale, int):
                c = c + self.scale_emb.weight[1 if scale is None else scale]
            else:
                c = c + self.scale_emb(scale.long())
        return c


class NoiseEmbedding(nn.Module):
    """Sinusoidal features of c_noise (= ln(sigma) / 4, about [-1.6, 1.1]) -> 2-layer MLP.

    Frequencies are geometric in [1, 100] rad per unit: the slowest separates the whole range,
    the fastest resolves ~1% changes of sigma.
    """

    def __init__(self, freqs: int, width: int) -> None:
        super().__init__()
        self.register_buffer(
            "freqs", torch.exp(torch.linspace(0.0, math.log(100.0), freqs)), persistent=False
        )
        self.mlp = nn.Sequential(nn.Linear(2 * freqs, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        angle = c_noise.unsqueeze(-1).to(self.freqs.dtype) * self.freqs
        return self.mlp(torch.cat([angle.cos(), angle.sin()], dim=-1))


class AdaLNBlock(nn.Module):
    """Pre-norm attention + MLP sublayers, each with (shift, scale, gate) from the conditioning."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, causal: bool) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.fc2 = nn.Linear(mlp_ratio * width, width)

    def forward(self, h: torch.Tensor, mods: tuple[torch.Tensor, ...]) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        h = torch.addcmul(h, gate1, self.attention(modulate(layer_norm(h), shift1, scale1)))
        y = self.fc2(F.gelu(self.fc1(modulate(layer_norm(h), shift2, scale2))))
        return torch.addcmul(h, gate2, y)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over the token dim; leading dims are flattened for SDPA."""
        *lead, T, W = x.shape
        qkv = self.qkv(x).reshape(-1, T, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(*lead, T, W))


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine parameters (adaLN supplies shift and scale)."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(shift, x, 1 + scale)
