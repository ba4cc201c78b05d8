"""Layers of the world model: NormedLinear, SimNorm, MLP builder and a batched Q-ensemble.

The Q-ensemble stores the weights of all heads stacked ([heads, in, out]) and evaluates them with
one matmul for the shared first layer and batched matmuls (bmm) after it. On this 2-core CPU that
is faster than both a Python loop over heads and `torch.vmap(functional_call)` (see the numbers
in the project notes), and it is naturally functional: the same forward runs on the live, the
detached (policy loss) and the EMA target parameters without copying modules.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ldmpc.math_utils import two_hot, two_hot_inv  # re-exported: nets is the layer namespace

__all__ = [
    "Mish",
    "NormedLinear",
    "QEnsemble",
    "SimNorm",
    "mish",
    "mlp",
    "two_hot",
    "two_hot_inv",
    "weight_init",
]


class _FastMish(torch.autograd.Function):
    """Mish with one exp: tanh(softplus(x)) = n / (n + 2), n = e^x (e^x + 2).

    ATen's CPU mish (tanh + softplus) was ~2x slower forward and ~1.4x slower forward+backward
    on this CPU, and Mish runs after every hidden layer of every network.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        e = x.clamp(max=20.0).exp_()  # beyond 20, tanh(softplus(x)) == 1 in float32
        n = (e + 2).mul_(e)
        t = n.div_(n + 2)
        ctx.save_for_backward(x, t, e)
        return t * x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        x, t, e = ctx.saved_tensors
        # d mish / dx = t + x * (1 - t^2) * sigmoid(x)
        return grad * (1 - t * t).mul_(e / (e + 1)).mul_(x).add_(t)


def mish(x: torch.Tensor) -> torch.Tensor:
    """x * tanh(softplus(x)) (same values as F.mish to float round-off, faster on CPU)."""
    return _FastMish.apply(x)


class Mish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mish(x)


class SimNorm(nn.Module):
    """Softmax over consecutive groups of `dim` features: keeps latents on a product of simplices.

    Bounded latents make long latent rollouts stable (TD-MPC2's main stabiliser). The softmax
    runs over a strided (non-last) dim: ATen's CPU softmax over a last dim of size 8 was ~7x
    slower than over the same data viewed as [..., dim, groups].
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = x.unflatten(-1, (-1, self.dim)).transpose(-1, -2)  # [..., dim, groups]
        return F.softmax(groups, dim=-2).transpose(-1, -2).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class NormedLinear(nn.Linear):
    """Linear -> (dropout) -> LayerNorm -> activation (Mish unless given)."""

    def __init__(
        self, in_dim: int, out_dim: int, dropout: float = 0.0, act: nn.Module | None = None
    ) -> None:
        super().__init__(in_dim, out_dim)
        self.ln = nn.LayerNorm(out_dim)
        self.act = act if act is not None else Mish()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.act(self.ln(x))


def mlp(
    in_dim: int,
    hidden: list[int],
    out_dim: int,
    act: nn.Module | None = None,
    dropout: float = 0.0,
) -> nn.Sequential:
    """NormedLinear hidden layers (dropout only on the first) and a plain or normed output layer.

    With `act` the output layer is normed and activated (encoder/dynamics end in SimNorm); without
    it the output is a raw Linear (logits, policy mean/log-std).
    """
    dims = [in_dim, *hidden]
    layers: list[nn.Module] = [
        NormedLinear(dims[i], dims[i + 1], dropout=dropout if i == 0 else 0.0)
        for i in range(len(hidden))
    ]
    layers.append(NormedLinear(dims[-1], out_dim, act=act) if act else nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


def weight_init(m: nn.Module) -> None:
    """TD-MPC2 init: truncated-normal(0.02) weights, zero biases, small uniform embeddings."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.uniform_(m.weight, -0.02, 0.02)


class QEnsemble(nn.Module):
    """`num_q` MLP heads (NormedLinear hidden layers, Linear output) with stacked weights.

    Parameters are named `w{i}`, `b{i}` (layer i) and `g{i}`, `beta{i}` (LayerNorm of hidden
    layer i). `forward(x, params=...)` takes any dict with these names (live, detached or target).
    Dropout acts on the first layer only, independently per head (as TD-MPC2).
    """

    def __init__(
        self, num_q: int, in_dim: int, hidden: list[int], out_dim: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.num_q, self.dropout, self.num_hidden = num_q, dropout, len(hidden)
        dims = [in_dim, *hidden, out_dim]
        for i in range(len(dims) - 1):
            w = torch.empty(num_q, dims[i], dims[i + 1])
            nn.init.trunc_normal_(w, std=0.02)
            self.register_parameter(f"w{i}", nn.Parameter(w))
            self.register_parameter(f"b{i}", nn.Parameter(torch.zeros(num_q, dims[i + 1])))
            if i < len(hidden):
                self.register_parameter(f"g{i}", nn.Parameter(torch.ones(num_q, dims[i + 1])))
                self.register_parameter(f"beta{i}", nn.Parameter(torch.zeros(num_q, dims[i + 1])))

    @property
    def last_weight(self) -> nn.Parameter:
        return getattr(self, f"w{self.num_hidden}")

    def forward(
        self,
        x: torch.Tensor,
        params: dict[str, torch.Tensor] | None = None,
        heads: torch.Tensor | None = None,
        training: bool | None = None,
    ) -> torch.Tensor:
        """x [..., in] -> [Q', ..., out] for all heads, or only the heads indexed by `heads` [Q'].

        `training` overrides the module's mode for dropout (the target ensemble never drops).
        """
        p = params if params is not None else dict(self.named_parameters())
        if heads is not None:
            p = {k: v.index_select(0, heads) for k, v in p.items()}
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])  # [M, in]
        w0 = p["w0"]
        q, din, dh = w0.shape
        # Shared input: one [M, in] x [in, Q*h] matmul for the first layer of every head.
        h = torch.addmm(p["b0"].reshape(-1), x, w0.permute(1, 0, 2).reshape(din, q * dh))
        if self.dropout > 0 and (self.training if training is None else training):
            h = F.dropout(h, self.dropout, training=True)
        h = h.view(-1, q, dh).transpose(0, 1)  # [Q, M, h]
        h = self._norm_act(h, p, 0)
        for i in range(1, self.num_hidden + 1):
            h = torch.baddbmm(p[f"b{i}"].unsqueeze(1), h, p[f"w{i}"])
            if i < self.num_hidden:
                h = self._norm_act(h, p, i)
        return h.view(q, *lead, h.shape[-1])

    @staticmethod
    def _norm_act(h: torch.Tensor, p: dict[str, torch.Tensor], i: int) -> torch.Tensor:
        h = F.layer_norm(h, h.shape[-1:])
        return mish(torch.addcmul(p[f"beta{i}"].unsqueeze(1), h, p[f"g{i}"].unsqueeze(1)))
