"""TD-MPC2's custom Walker tasks: moving backwards, yoga poses and flips.

Same body and initial-state distribution as dm_control's walker; only the reward changes.
Upside-down poses (lie down, legs up, flips) reward a torso pointing down, (1 - upright) / 2.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from dm_control.suite import walker

from ldmpc.envs.custom.common import above, below, environment, speed_reward

_STAND = 1.0  # torso / foot height of a standing pose
_LIE = 0.08  # height of a body part lying on the floor
_LEGS_UP = 1.1  # feet height with legs in the air


def _mean_z(physics: walker.Physics, *bodies: str) -> float:
    return float(np.mean([physics.named.data.xpos[body, "z"] for body in bodies]))


def _upside_down(physics: walker.Physics) -> float:
    return (1.0 - physics.torso_upright()) / 2.0


def _move_bonus(physics: walker.Physics, speed: float) -> float:
    """Scales a pose reward by movement: 1/6 of it when still, all of it at the target speed."""
    if speed == 0:
        return 1.0
    move = speed_reward(physics.horizontal_velocity(), speed, abs(speed) / 2, at_margin=0.5)
    return (5.0 * move + 1.0) / 6.0


def backwards(physics: walker.Physics, speed: float) -> float:
    """dm_control's walk/run reward with the target velocity negated."""
    standing = above(physics.torso_height(), walker._STAND_HEIGHT, walker._STAND_HEIGHT / 2)
    upright = (1.0 + physics.torso_upright()) / 2.0
    return (3.0 * standing + upright) / 4.0 * _move_bonus(physics, -speed)


def arabesque(physics: walker.Physics) -> float:
    standing = above(physics.torso_height(), _STAND, _STAND / 2)
    left_down = below(physics.named.data.xpos["left_foot", "z"], _LIE, _STAND / 2)
    right_up = above(physics.named.data.xpos["right_foot", "z"], _STAND, _STAND / 2)
    return (3.0 * standing + left_down + right_up + _upside_down(physics)) / 6.0


def lie_down(physics: walker.Physics) -> float:
    torso_down = below(physics.torso_height(), _LIE, _LIE / 2)
    thighs_down = below(_mean_z(physics, "left_thigh", "right_thigh"), _LIE, _LIE / 2)
    return (3.0 * torso_down + thighs_down + _upside_down(physics)) / 5.0


def legs_up(physics: walker.Physics) -> float:
    torso_down = below(physics.torso_height(), _LIE, _LIE / 2)
    thighs_down = below(_mean_z(physics, "left_thigh", "right_thigh"), _LIE, _LIE / 2)
    feet_up = above(_mean_z(physics, "left_foot", "right_foot"), _LEGS_UP, _LEGS_UP / 2)
    return (3.0 * torso_down + 2.0 * feet_up + thighs_down + _upside_down(physics)) / 7.0


def flip(physics: walker.Physics, speed: float) -> float:
    """Legs and thighs high (a headstand); with speed != 0, also travel while upside down."""
    thighs_up = above(_mean_z(physics, "left_thigh", "right_thigh"), _STAND, _STAND / 2)
    feet_up = above(_mean_z(physics, "left_foot", "right_foot"), _LEGS_UP, _LEGS_UP / 2)
    return (3.0 * feet_up + 2.0 * thighs_up) / 5.0 * _move_bonus(physics, speed)


class _Walker(walker.PlanarWalker):
    """A PlanarWalker (same reset and observations) scored by `reward_fn`."""

    def __init__(self, reward_fn: Callable[[walker.Physics], float], random=None) -> None:
        super().__init__(move_speed=0.0, random=random)
        self._reward_fn = reward_fn

    def get_reward(self, physics: walker.Physics) -> float:
        return self._reward_fn(physics)


_FLIP_SPEED = walker._RUN_SPEED * 0.75
_REWARDS: dict[str, Callable[[walker.Physics], float]] = {
    "walk_backwards": lambda p: backwards(p, walker._WALK_SPEED),
    "run_backwards": lambda p: backwards(p, walker._RUN_SPEED),
    "arabesque": arabesque,
    "lie_down": lie_down,
    "legs_up": legs_up,
    "headstand": lambda p: flip(p, 0.0),
    "flip": lambda p: flip(p, _FLIP_SPEED),
    "backflip": lambda p: flip(p, -_FLIP_SPEED),
}


def make(task: str, random: np.random.RandomState, time_limit: float):
    physics = walker.Physics.from_xml_string(*walker.get_model_and_assets())
    return environment(
        physics, _Walker(_REWARDS[task], random), time_limit, walker._CONTROL_TIMESTEP
    )


TASKS = tuple(_REWARDS)
