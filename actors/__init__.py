"""Ray side of ldmpc: env runners (planner RLModule) and, later, replay shard actors.

Importing ray.rllib imports dm_control, which fixes its OpenGL backend at that moment from
MUJOCO_GL; so the headless backend is chosen here, before any submodule imports ray.rllib.
"""

from ldmpc.envs.render import configure_mujoco_gl

configure_mujoco_gl()
