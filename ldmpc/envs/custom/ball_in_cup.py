"""TD-MPC2's Cup Spin: swing the ball around the cup (out of it, far from it, and fast).

Episodes mostly start with the ball resting in the cup, so the agent has to throw it out first.
"""

from __future__ import annotations

import numpy as np
from dm_control.suite import ball_in_cup, base

from ldmpc.envs.custom.common import above, environment

_FAR = 0.5  # ball-to-cup distance for full distance reward (the string is 0.3 long: a soft goal)
_FAST = 6.0  # ball speed (m/s) for full speed reward
_START_OUTSIDE = 0.1  # fraction of episodes that start with the ball anywhere, not in the cup


class _Spin(ball_in_cup.BallInCup):
    def initialize_episode(self, physics: ball_in_cup.Physics) -> None:
        if self.random.uniform() < _START_OUTSIDE:
            super().initialize_episode(physics)  # catch's reset: ball anywhere, no contact
            return
        # Ball joints slide relative to the ball body's rest position; sample inside the target
        # box of the (resting) cup, shrunk by the ball radius, until nothing touches.
        physics.after_reset()
        center = physics.named.data.site_xpos["target", ["x", "z"]]
        center = center - physics.named.model.body_pos["ball", ["x", "z"]]
        room = physics.named.model.site_size["target", [0, 2]]
        room = room - physics.named.model.geom_size["ball", 0]
        while True:
            physics.named.data.qpos[["ball_x", "ball_z"]] = center + self.random.uniform(
                -room, room
            )
            physics.after_reset()
            if physics.data.ncon == 0:
                break
        base.Task.initialize_episode(self, physics)

    def get_reward(self, physics: ball_in_cup.Physics) -> float:
        distance = float(np.linalg.norm(physics.ball_to_target()))
        speed = float(np.linalg.norm(physics.named.data.qvel[["ball_x", "ball_z"]]))
        far = above(distance, _FAR, _FAR / 2, linear=True, at_margin=0.5)
        fast = above(speed, _FAST, _FAST / 2, linear=True, at_margin=0.5)
        return (1.0 - physics.in_target()) * (far + 2.0 * fast) / 3.0


def make(task: str, random: np.random.RandomState, time_limit: float):
    assert task == "spin", task
    physics = ball_in_cup.Physics.from_xml_string(*ball_in_cup.get_model_and_assets())
    return environment(physics, _Spin(random=random), time_limit, ball_in_cup._CONTROL_TIMESTEP)


TASKS = ("spin",)
