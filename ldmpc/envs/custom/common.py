"""Shared pieces of the custom DMC tasks: reward shaping helpers and environment assembly.

The rewards follow dm_control's convention (`rewards.tolerance`: 1 inside the bounds, decaying
to `value_at_margin` at `margin` outside), so custom tasks score on the same [0, 1] per-step
scale as the standard ones and a 1000-step episode returns at most 1000.
"""

from __future__ import annotations

import os

import numpy as np
from dm_control.rl import control
from dm_control.suite import base
from dm_control.utils import rewards

ASSET_DIR = os.path.dirname(os.path.abspath(__file__))
INF = float("inf")


def between(
    x: float, low: float, high: float, margin: float, linear: bool = False, at_margin: float = 0.1
) -> float:
    """1 inside [low, high], decaying outside it: gaussian by default, or linear to `at_margin`."""
    sigmoid = "linear" if linear else "gaussian"
    return float(rewards.tolerance(x, (low, high), margin, sigmoid, at_margin))


def above(
    x: float, low: float, margin: float, linear: bool = False, at_margin: float = 0.1
) -> float:
    """1 when x >= low, decaying below it."""
    return between(x, low, INF, margin, linear, at_margin)


def below(
    x: float, high: float, margin: float, linear: bool = False, at_margin: float = 0.1
) -> float:
    """1 when x <= high, decaying above it."""
    return between(x, -INF, high, margin, linear, at_margin)


def speed_reward(velocity: float, target: float, margin: float, at_margin: float) -> float:
    """Linear reward for moving at least |target| fast in the direction of target's sign."""
    return above(np.sign(target) * velocity, abs(target), margin, linear=True, at_margin=at_margin)


def read_asset(name: str) -> str:
    """An XML file shipped next to this module (package data of the editable install)."""
    with open(os.path.join(ASSET_DIR, name), encoding="utf-8") as f:
        return f.read()


def environment(
    physics, task: base.Task, time_limit: float, control_timestep: float | None = None
) -> control.Environment:
    """A dm_control Environment; control_timestep None means one physics step per action."""
    kwargs = {} if control_timestep is None else {"control_timestep": control_timestep}
    return control.Environment(physics, task, time_limit=time_limit, **kwargs)
