"""TD-MPC2's custom Cheetah tasks: running backwards or on one leg, standing, jumping, flips.

"Front"/"back" name the leg the cheetah stays on, so the *other* foot must be lifted high.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from dm_control.suite import cheetah

from ldmpc.envs.custom.common import above, below, between, environment, speed_reward

_UP = 1.2  # torso / lifted-foot height that counts as reared up
_LIE = 0.25  # torso / feet height that counts as lying down
_SPIN = 8.0  # torso angular momentum (about y) of a full-reward flip
_STILL = 0.5  # speed band (+/-) for the standing poses


def _z(physics: cheetah.Physics, body: str) -> float:
    return float(physics.named.data.xpos[body, "z"])


def _angular_momentum(physics: cheetah.Physics) -> float:
    return float(physics.named.data.subtree_angmom["torso", 1])


def run_backwards(physics: cheetah.Physics, speed: float) -> float:
    return speed_reward(physics.speed(), -speed, speed, at_margin=0.0)


def stand(physics: cheetah.Physics, lifted_foot: str) -> float:
    """Reared up on one leg (mean of torso and lifted-foot height high) while staying in place."""
    height = above((_z(physics, "torso") + _z(physics, lifted_foot)) / 2, _UP, _UP / 2)
    still = between(physics.speed(), -_STILL, _STILL, _STILL, linear=True, at_margin=0.0)
    return (5.0 * height + still) / 6.0


def jump(physics: cheetah.Physics) -> float:
    return (stand(physics, "bfoot") + stand(physics, "ffoot")) / 2.0


def run_one_leg(physics: cheetah.Physics, lifted_foot: str, speed: float) -> float:
    """Torso and lifted foot high; with speed > 0, also run forward at least that fast."""
    up = (
        3.0 * above(_z(physics, lifted_foot), _UP, _UP / 2)
        + 2.0 * above(_z(physics, "torso"), _UP, _UP / 2)
    ) / 5.0
    if speed == 0:
        return up
    return up * (5.0 * speed_reward(physics.speed(), speed, speed, at_margin=0.0) + 1.0) / 6.0


def lie_down(physics: cheetah.Physics) -> float:
    torso_down = below(_z(physics, "torso"), _LIE, _LIE, linear=True, at_margin=0.0)
    feet = (_z(physics, "ffoot") + _z(physics, "bfoot")) / 2
    feet_down = below(feet, _LIE, _LIE, linear=True, at_margin=0.0)
    return (3.0 * torso_down + feet_down) / 4.0


def legs_up(physics: cheetah.Physics) -> float:
    """On its back: torso low, front leg raised."""
    torso_down = below(_z(physics, "torso"), _LIE, _LIE / 2)
    return (5.0 * torso_down + run_one_leg(physics, "bfoot", 0.0)) / 6.0


def flip(physics: cheetah.Physics, speed: float) -> float:
    """Spin the torso (forward for speed > 0, backward for speed < 0) while travelling that way."""
    direction = np.sign(speed)
    spin = above(direction * _angular_momentum(physics), _SPIN, _SPIN, linear=True, at_margin=0.0)
    travel = speed_reward(physics.speed(), speed, abs(speed), at_margin=0.0)
    return (2.0 * spin + travel) / 3.0


class _Cheetah(cheetah.Cheetah):
    """dm_control's Cheetah (same reset and observations) scored by `reward_fn`."""

    def __init__(self, reward_fn: Callable[[cheetah.Physics], float], random=None) -> None:
        super().__init__(random=random)
        self._reward_fn = reward_fn

    def get_reward(self, physics: cheetah.Physics) -> float:
        return self._reward_fn(physics)


_RUN = cheetah._RUN_SPEED
_REWARDS: dict[str, Callable[[cheetah.Physics], float]] = {
    "run_backwards": lambda p: run_backwards(p, 0.8 * _RUN),
    "run_front": lambda p: run_one_leg(p, "bfoot", 0.6 * _RUN),
    "run_back": lambda p: run_one_leg(p, "ffoot", 0.6 * _RUN),
    "stand_front": lambda p: stand(p, "bfoot"),
    "stand_back": lambda p: stand(p, "ffoot"),
    "jump": jump,
    "lie_down": lie_down,
    "legs_up": legs_up,
    "flip": lambda p: flip(p, _RUN),
    "flip_backwards": lambda p: flip(p, -0.8 * _RUN),
}


def make(task: str, random: np.random.RandomState, time_limit: float):
    physics = cheetah.Physics.from_xml_string(*cheetah.get_model_and_assets())
    return environment(physics, _Cheetah(_REWARDS[task], random), time_limit)


TASKS = tuple(_REWARDS)
