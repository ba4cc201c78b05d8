"""Process-level runtime choices (device, CPU threads), taken from the config, never hard-coded."""

from __future__ import annotations

import os
from typing import Any

import torch

from ldmpc.errors import UserError


def resolve_device(name: str) -> torch.device:
    """`auto` -> the first CUDA device when one is visible, else CPU; `cuda` needs one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name}: no CUDA device is visible here (use device=cpu or auto)")
    return torch.device(name)


def set_threads(requested: int) -> int:
    """Pin torch's intra-op threads; 0 means the cores this process may use.

    On a 2-core box, several processes each using all cores stall each other (docs/design.md §3.3),
    so every actor and the driver calls this with its share.
    """
    n = requested or len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, n))
    return n


def set_actor_threads(rllib_config: Any) -> int:
    """A remote Ray actor's share: the run's `torch_threads`, or 1 when that is 0 ("all cores"
    would oversubscribe the machine once several actors share it)."""
    requested = getattr(rllib_config, "ldmpc", {}).get("torch_threads") or 1
    return set_threads(requested)
