"""Per-token conditioning for multi-scale sequences: the actions each token spans."""

from __future__ import annotations

import torch


def action_tokens(
    actions: torch.Tensor, scale: int | torch.Tensor, num_tokens: int, max_scale: int
) -> torch.Tensor:
    """[..., W, A] actions -> [..., num_tokens, max_scale * A] action tokens at temporal scale s.

    Token t (the latent s * (t + 1) env steps ahead) carries a_{t s}, ..., a_{t s + s - 1}
    concatenated and zero-padded to max_scale actions, so one `token_dim = max_scale * A` serves
    every scale. `scale` is an int or a long tensor broadcastable to the leading dims (a mixed-
    scale training batch); every s must satisfy 1 <= s <= max_scale and num_tokens * s <= W.
    Pure gathers: no host sync, same result batched or per item.
    """
    W, A = actions.shape[-2:]
    if isinstance(scale, int):  # a fill, not a host-to-device copy (which would sync a GPU)
        scale = torch.full((), scale, device=actions.device)
    s = scale.long()[..., None, None]  # [..., 1, 1]
    t = torch.arange(num_tokens, device=actions.device)[:, None]
    j = torch.arange(max_scale, device=actions.device)
    valid = j < s  # [..., 1, M]
    idx = torch.where(valid, t * s + j, 0)  # [..., T, M]
    lead = torch.broadcast_shapes(actions.shape[:-2], idx.shape[:-2])
    idx = idx.expand(*lead, num_tokens, max_scale).reshape(*lead, num_tokens * max_scale, 1)
    picked = actions.expand(*lead, W, A).gather(-2, idx.expand(*idx.shape[:-1], A))
    picked = picked.view(*lead, num_tokens, max_scale, A) * valid[..., None].to(actions.dtype)
    return picked.reshape(*lead, num_tokens, max_scale * A)
