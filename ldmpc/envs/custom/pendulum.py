"""TD-MPC2's Pendulum Spin: swing the pole round and round as fast as possible."""

from __future__ import annotations

import numpy as np
from dm_control.suite import pendulum

from ldmpc.envs.custom.common import above, environment

_SPIN_SPEED = 9.0  # rad/s (either direction) for full reward


class _Spin(pendulum.SwingUp):
    """SwingUp's reset (random angle) and observations; rewarded for angular speed."""

    def get_reward(self, physics: pendulum.Physics) -> float:
        speed = abs(float(physics.angular_velocity()[0]))
        return above(speed, _SPIN_SPEED, _SPIN_SPEED / 2, linear=True, at_margin=0.5)


def make(task: str, random: np.random.RandomState, time_limit: float):
    assert task == "spin", task
    physics = pendulum.Physics.from_xml_string(*pendulum.get_model_and_assets())
    return environment(physics, _Spin(random=random), time_limit)


TASKS = ("spin",)
