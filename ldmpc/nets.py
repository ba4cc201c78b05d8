"""Layers of the world model: NormedLinear, SimNorm, MLP builder and a stacked Q-ensemble.

The Q-ensemble stores the weights of all heads stacked ([heads, in, out]) and is functional: the
same forward runs on the live, the detached (policy loss) and the EMA target parameters without
copying modules. It evaluates the heads one after the other with plain addmm. Measured on the
2-core CPU (1 thread, CPU time, 768 rows, ATen Mish in all variants): size-1 Q (2 heads)
forward 16.5 ms vs 16.3 (stacked bmm) / 18.7 (vmap of functional_call), forward+backward 43.3
vs 45.4 / 49.2; size-5 Q (5 heads) forward 72 vs 90 / 83, forward+backward 235 vs 237 / 265.
Per-head weights are contiguous views, so selecting heads costs no copies. On a GPU the
per-head launches cost little at these sizes, and `torch.compile` can fuse them.
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
    "dropout",
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
    """x * tanh(softplus(x)) (same values as F.mish to float round-off, faster on CPU).

    Without autograd (planning) the intermediates are updated in place: ~25% faster again.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _FastMish.apply(x)
    e = x.clamp(max=20.0).exp_()
    n = (e + 2).mul_(e)
    return n.div_(n + 2).mul_(x)


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


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout with the same mask eagerly and under torch.compile (CPU).

    The mask comes from 64-bit random words read as 4 x 16 bits, the drop probability
    quantised to 1/65536: ATen's CPU bernoulli_ draws one 32-bit number per element on one
    thread (3 ms for a 768 x 768 mask here, ~5 % of an update), and inductor's own CPU dropout
    draws each element through a scalar Philox inside its loop (~25 % of a compiled update).
    The words come from `torch.randint` over the whole int64 range, which a compiled graph
    calls as the ATen op (`LOSS_OPTIONS`' fallback_random), so eager and compiled code draw
    the same masks from the same generator state (tests compare the two updates). An int32
    hash of (index, drawn seed) was faster compiled (~0.2 ms per update) but its runs learned
    less on cartpole-swingup (docs/results.md). Off the CPU it is plain F.dropout.
    """
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    n = x.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), device=x.device)
    bits = words.view(torch.int16)[:n].view(x.shape)
    keep = bits >= int(-32768 + round(p * 65536))
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


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
        if heads is None:
            idx: list[int] | None = list(range(self.num_q))
        elif heads.device.type == "cpu" and not torch.compiler.is_compiling():
            idx = heads.tolist()  # host ints: weight views, no copies (and no device sync)
        else:
            # gathered along a new leading dim: inductor's rewrite of `index(x, randperm[:k])`
            # on dim 0 fails to match a constant k (torch 2.13: missing slice_shape)
            p = {k: v.unsqueeze(0).index_select(1, heads).squeeze(0) for k, v in p.items()}
            idx = None
        idx = idx if idx is not None else list(range(len(heads)))  # type: ignore[arg-type]
        drop = self.dropout if (self.training if training is None else training) else 0.0
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        outs = []
        for q in idx:
            h = x
            for i in range(self.num_hidden + 1):
                h = torch.addmm(p[f"b{i}"][q], h, p[f"w{i}"][q])
                if i == 0 and drop > 0:
                    h = dropout(h, drop)
                if i < self.num_hidden:
                    h = mish(F.layer_norm(h, h.shape[-1:], p[f"g{i}"][q], p[f"beta{i}"][q]))
            outs.append(h)
        return torch.stack(outs).view(len(idx), *lead, -1)
