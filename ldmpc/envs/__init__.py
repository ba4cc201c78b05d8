"""Environment construction: task name -> fully wrapped gymnasium env or vector env.

Suite adapters are imported lazily, so importing `ldmpc.envs` (e.g. for `ldmpc.envs.render`)
pulls in no simulator.

Vector envs use gymnasium's SAME_STEP autoreset: when sub-env i ends an episode, `step()`
already returns the first observation of its next episode, and the true last observation and
info of the finished episode are in `infos["final_obs"][i]` / `infos["final_info"]` (masked by
`infos["_final_obs"]`). So no step is wasted on a reset and the trainer can store the real final
observation of every episode (needed to bootstrap truncated episodes).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ldmpc.errors import UserError
from ldmpc.mujoco_gl import configure_mujoco_gl
from ldmpc.tasks import TaskSpec, resolve_tasks

if TYPE_CHECKING:
    from collections.abc import Callable

    import gymnasium

OBS_TYPES = ("state", "rgb")
# Suites whose adapters render pixel observations, and the renderer each one needs.
RGB_SUITES = {"dmcontrol": "mujoco", "metaworld": "mujoco", "maniskill2": "sapien"}


def _single_task(task: str) -> TaskSpec:
    specs = resolve_tasks(task)
    if len(specs) != 1:
        raise UserError(f"expected one task, got {len(specs)} from task={task} (a task set)")
    return specs[0]


def _check_obs(spec: TaskSpec, obs: str) -> None:
    """One-line UserError when `obs` cannot be produced for this task on this machine."""
    if obs not in OBS_TYPES:
        raise UserError(f"obs={obs}: allowed {', '.join(OBS_TYPES)}")
    if obs != "rgb":
        return
    if spec.suite not in RGB_SUITES:
        raise UserError(
            f"obs=rgb is not supported for {spec.suite} tasks such as {spec.name} (TD-MPC2 "
            f"trains them from state; rgb works for {', '.join(RGB_SUITES)}): use obs=state"
        )
    if RGB_SUITES[spec.suite] == "mujoco":
        from ldmpc.envs.render import rendering_problem

        problem = rendering_problem()  # before the suite import: it may switch EGL -> OSMesa
        if problem:
            raise UserError(f"obs=rgb is unavailable on this machine: {problem}")


def make_env(task: str, seed: int, obs: str = "state") -> gymnasium.Env:
    """One env of a single task: actions in [-1, 1], action repeat, and truncation after
    `episode_length` agent steps. Its first `reset()` uses `seed`. Observations: flat float32
    (obs=state) or a uint8 stack of 3 frames [9, 64, 64] (obs=rgb, `ldmpc.envs.pixels`)."""
    spec = _single_task(task)
    _check_obs(spec, obs)
    configure_mujoco_gl()  # before a suite imports mujoco/dm_control (no-op once chosen)
    if spec.suite == "dmcontrol":
        from ldmpc.envs.dmcontrol import make_dmcontrol_env

        env = make_dmcontrol_env(spec.env_kwargs, seed)
    elif spec.suite == "maniskill2":
        from ldmpc.envs.maniskill2 import make_maniskill2_env

        env = make_maniskill2_env(spec.env_kwargs, seed)
    elif spec.suite == "metaworld":
        from ldmpc.envs.metaworld import make_metaworld_env

        env = make_metaworld_env(spec.env_kwargs, seed)
    elif spec.suite == "myosuite":
        from ldmpc.envs.myosuite import make_myosuite_env

        env = make_myosuite_env(spec.env_kwargs, seed)
    else:  # resolve_tasks already rejects unsupported suites; this guards a registry mistake
        raise UserError(f"task '{spec.name}' ({spec.suite}) is not yet supported in this version")
    from ldmpc.envs.wrappers import standard_wrappers

    env = standard_wrappers(env, spec.action_repeat, spec.episode_length)
    if obs == "rgb":  # outermost: one frame per agent step, not per simulator step
        from ldmpc.envs.pixels import PixelObservation

        env = PixelObservation(env)
    return env


def make_vector_env(
    task: str, num_envs: int, seed: int, obs: str = "state"
) -> gymnasium.vector.VectorEnv:
    """`num_envs` copies of one task stepped in-process (SyncVectorEnv); env i uses seed + i.

    Autoreset mode is SAME_STEP (see the module docstring for where final observations go).
    """
    if num_envs < 1:
        raise UserError(f"num_envs must be >= 1, got {num_envs}")
    _single_task(task)  # fail with one line before building anything
    return vector_of([functools.partial(make_env, task, seed + i, obs) for i in range(num_envs)])


def vector_of(env_fns: list[Callable[[], gymnasium.Env]]) -> gymnasium.vector.VectorEnv:
    """The in-process vector env every ldmpc loop steps: SAME_STEP autoreset (final observations
    in `info["final_obs"]`, the next episode's first observation in `obs`)."""
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    return SyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)
