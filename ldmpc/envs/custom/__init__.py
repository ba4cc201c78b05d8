"""TD-MPC2's custom DMControl tasks, reimplemented: one module per dm_control domain.

Each module exposes `TASKS` (dm_control-style task names) and `make(task, random, time_limit)`
returning a `dm_control.rl.control.Environment`. They are kept in this registry instead of being
added to dm_control's global suite, so importing ldmpc changes nothing in dm_control.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

from ldmpc.envs.custom import (
    ball_in_cup,
    cheetah,
    fish,
    hopper,
    pendulum,
    reacher,
    walker,
)

_MODULES: dict[str, ModuleType] = {
    "ball_in_cup": ball_in_cup,
    "cheetah": cheetah,
    "fish": fish,
    "hopper": hopper,
    "pendulum": pendulum,
    "reacher": reacher,
    "walker": walker,
}

CUSTOM_TASKS: dict[tuple[str, str], Callable] = {
    (domain, task): module.make for domain, module in _MODULES.items() for task in module.TASKS
}
