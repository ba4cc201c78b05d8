"""Ray side of ldmpc: the TorchLearner that owns the optimizers and runs the update.

Like `actors`, choose MuJoCo's headless GL backend before any submodule imports ray.rllib
(which imports dm_control, fixing the backend from MUJOCO_GL at that moment).
"""

from ldmpc.envs.render import configure_mujoco_gl

configure_mujoco_gl()
