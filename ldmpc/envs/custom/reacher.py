"""TD-MPC2's Reacher Three/Four: dm_control's reacher task on a three- or four-link arm.

The arms (reacher_three.xml, reacher_four.xml) keep dm_control's geom names, so its Reacher
task applies as is: random joint angles and target position, observations, sparse reward.
"""

from __future__ import annotations

import numpy as np
from dm_control.suite import common, reacher

from ldmpc.envs.custom.common import environment, read_asset

_XML = {"three": "reacher_three.xml", "four": "reacher_four.xml"}
_TARGET_SIZE = {"easy": reacher._BIG_TARGET, "hard": reacher._SMALL_TARGET}


def make(task: str, random: np.random.RandomState, time_limit: float):
    links, difficulty = task.split("_")
    physics = reacher.Physics.from_xml_string(read_asset(_XML[links]), common.ASSETS)
    return environment(
        physics, reacher.Reacher(_TARGET_SIZE[difficulty], random=random), time_limit
    )


TASKS = ("three_easy", "three_hard", "four_easy", "four_hard")
