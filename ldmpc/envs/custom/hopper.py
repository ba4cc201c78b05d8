"""TD-MPC2's custom Hopper tasks: hopping backwards and flipping (forward or backward)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from dm_control.suite import hopper

from ldmpc.envs.custom.common import above, between, environment, speed_reward

_SPIN = 5.0  # torso angular momentum (about y) of a full-reward flip


def hop_backwards(physics: hopper.Physics) -> float:
    """dm_control's hop reward with the target velocity negated."""
    standing = between(physics.height(), hopper._STAND_HEIGHT, 2.0, margin=0.0)
    hopping = speed_reward(physics.speed(), -hopper._HOP_SPEED / 2, hopper._HOP_SPEED / 4, 0.5)
    return standing * hopping


def flip(physics: hopper.Physics, direction: float) -> float:
    momentum = direction * float(physics.named.data.subtree_angmom["torso", 1])
    return above(momentum, _SPIN, _SPIN / 2, linear=True, at_margin=0.0)


class _Hopper(hopper.Hopper):
    """dm_control's Hopper (same reset and observations) scored by `reward_fn`."""

    def __init__(self, reward_fn: Callable[[hopper.Physics], float], random=None) -> None:
        super().__init__(hopping=True, random=random)
        self._reward_fn = reward_fn

    def get_reward(self, physics: hopper.Physics) -> float:
        return self._reward_fn(physics)


_REWARDS: dict[str, Callable[[hopper.Physics], float]] = {
    "hop_backwards": hop_backwards,
    "flip": lambda p: flip(p, 1.0),
    "flip_backwards": lambda p: flip(p, -1.0),
}


def make(task: str, random: np.random.RandomState, time_limit: float):
    physics = hopper.Physics.from_xml_string(*hopper.get_model_and_assets())
    return environment(
        physics, _Hopper(_REWARDS[task], random), time_limit, hopper._CONTROL_TIMESTEP
    )


TASKS = tuple(_REWARDS)
