"""MyoSuite envs for real: every registered task, the episode contract, success, seeding."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from env_rollout import check_reset_and_step, check_seeding

from ldmpc.envs import make_env, make_vector_env
from ldmpc.envs.render import rendering_problem
from ldmpc.errors import UserError
from ldmpc.tasks import TASKS

# Not importorskip: importing myosuite here would import mujoco before the adapter picks
# MuJoCo's headless GL backend, and rendering would then fail.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("myosuite") is None, reason="myosuite is not installed"
)

MYO_TASKS = [name for name, spec in TASKS.items() if spec.suite == "myosuite"]


def test_all_10_tasks_are_registered() -> None:
    assert len(MYO_TASKS) == 10


@pytest.mark.parametrize("task", MYO_TASKS)
def test_every_task_resets_and_steps(task: str) -> None:
    env = make_env(task, seed=0)
    assert env.action_space.shape == (39,)  # 39 muscles of the hand
    check_reset_and_step(env, 100, 1)


def test_full_episode_truncates_after_100_agent_steps() -> None:
    """Random muscle activations end MyoSuite's reach episodes early ("done": hand too far
    from the target); as in TD-MPC2 that is ignored and the episode runs all 100 steps."""
    env = make_env("myo-reach", seed=1)
    env.action_space.seed(1)
    env.reset()
    sim = env.unwrapped.sim
    for step in range(1, 101):
        _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated and truncated == (step == 100) and np.isfinite(reward)
    assert sim.rwd_dict["done"]  # MyoSuite itself would have ended this episode
    assert sim.time == pytest.approx(100 * sim.dt)  # action repeat 1
    env.reset()  # a new episode starts cleanly after truncation
    assert sim.time == 0.0 and not env.step(env.action_space.sample())[3]


def test_success_is_reported_when_the_task_is_solved() -> None:
    env = make_env("myo-pose", seed=0)
    env.reset()
    sim = env.unwrapped.sim
    assert env.step(np.zeros(39, np.float32))[4]["success"] == 0.0
    sim.target_jnt_value = sim.mj_data.qpos.copy()  # the hand is now (almost) in the target pose
    assert env.step(np.zeros(39, np.float32))[4]["success"] == 1.0


@pytest.mark.parametrize("task", ["myo-reach-hard", "myo-obj-hold-hard"])
def test_same_seed_same_trajectory(task: str) -> None:
    check_seeding(task, steps=20, history=15)  # a new episode: a new target


def test_vector_env_shapes_and_seeds() -> None:
    envs = make_vector_env("myo-reach-hard", num_envs=2, seed=10)
    obs, _ = envs.reset()
    assert obs.shape == (2, 115) and obs.dtype == np.float32
    assert envs.action_space.shape == (2, 39) and envs.single_action_space.shape == (39,)
    for i in range(2):
        np.testing.assert_array_equal(obs[i], make_env("myo-reach-hard", seed=10 + i).reset()[0])
    obs, rewards, terminated, _, infos = envs.step(envs.action_space.sample())
    assert obs.shape == (2, 115) and rewards.shape == (2,) and not terminated.any()
    assert infos["success"].shape == (2,)
    envs.close()


def test_bad_seed_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"seed must be in \[0, 2\*\*32\) for myosuite"):
        make_env("myo-reach", seed=2**32)


def test_import_and_construction_print_nothing() -> None:
    """MyoSuite's import banner and citation credits stay out of the user's console."""
    code = "from ldmpc.envs import make_env; make_env('myo-reach', 0).reset()"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "precision lowered" not in proc.stderr


def test_render_frame() -> None:
    problem = rendering_problem()
    if problem is not None:
        pytest.skip(problem)
    env = make_env("myo-reach", seed=0)
    env.reset()
    frame = env.render()
    assert frame.shape == (384, 384, 3) and frame.dtype == np.uint8 and frame.std() > 0
    small = env.unwrapped.render(64)
    assert small.shape == (64, 64, 3) and small.std() > 0
    assert env.metadata["render_fps"] == pytest.approx(50.0)  # 1 / 0.02 s, repeat 1
    env.close()
