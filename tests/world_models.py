"""World models for planner tests whose outputs are not the real init's zeros."""

from __future__ import annotations

from typing import Any

import torch

from ldmpc.world_model import WorldModel


def random_model(cfg: Any) -> WorldModel:
    """Non-trivial outputs everywhere: the real init zeroes the reward, Q and denoiser outputs,
    so every candidate would score the same and no planner test could tell them apart."""
    torch.manual_seed(0)
    model = WorldModel(cfg).eval()
    with torch.no_grad():
        model._reward[-1].weight.normal_(0, 0.5)
        model._Qs.last_weight.normal_(0, 0.5)
        for part in (model._diff_dynamics, model._proposals):  # with the diffusion switches
            if part is not None:
                for p in part.parameters():
                    p.normal_(0, 0.05)
    return model
