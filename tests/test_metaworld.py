"""Meta-World envs for real: every registered task, the episode contract, success, seeding."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from env_rollout import check_reset_and_step, check_seeding

from ldmpc.envs import make_env, make_vector_env
from ldmpc.envs.render import rendering_problem
from ldmpc.errors import UserError
from ldmpc.tasks import TASKS

# Not importorskip: importing metaworld here would import mujoco before the adapter picks
# MuJoCo's headless GL backend, and rendering would then fail.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("metaworld") is None, reason="metaworld is not installed"
)

MW_TASKS = [name for name, spec in TASKS.items() if spec.suite == "metaworld"]


def test_all_50_tasks_are_registered() -> None:
    assert len(MW_TASKS) == 50


@pytest.mark.parametrize("task", MW_TASKS)
def test_every_task_resets_and_steps(task: str) -> None:
    env = make_env(task, seed=0)
    assert env.action_space.shape == (4,) and env.observation_space.shape == (39,)
    obs = check_reset_and_step(env, 100, 2)
    assert np.any(obs[-3:] != 0)  # goal observable: the goal position is part of the state


def test_full_episode_truncates_after_100_agent_steps() -> None:
    env = make_env("mw-door-open", seed=1)
    env.action_space.seed(1)
    for _ in range(3):  # 3 x 200 control steps: Meta-World's own 500-step limit must not bite
        env.reset()
        for step in range(1, 101):
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            assert not terminated and truncated == (step == 100) and 0.0 <= reward <= 20.0
        assert env.unwrapped.sim.curr_path_length == 200  # action repeat 2


def test_base_env_never_ends_episodes_itself() -> None:
    env = make_env("mw-reach", seed=0).unwrapped
    env.reset()
    zero = np.zeros(4, np.float32)
    for _ in range(501):  # past Meta-World's max_path_length, which would raise
        _, _, terminated, truncated, _ = env.step(zero)
        assert not terminated and not truncated


@pytest.mark.filterwarnings("ignore:Constant:UserWarning")  # the scripted policy's own warning
def test_success_is_reported_when_the_task_is_solved() -> None:
    from metaworld.policies.sawyer_reach_v3_policy import SawyerReachV3Policy

    env = make_env("mw-reach", seed=0)
    obs, _ = env.reset()
    policy = SawyerReachV3Policy()
    successes = []
    for _ in range(100):
        obs, _, _, _, info = env.step(np.clip(policy.get_action(obs), -1, 1))
        successes.append(info["success"])
    assert successes[0] == 0.0 and successes[-1] == 1.0


@pytest.mark.parametrize("task", ["mw-door-open", "mw-pick-place"])
def test_same_seed_same_trajectory(task: str) -> None:
    check_seeding(task, steps=30, history=20)  # a new episode: a new object placement


def test_different_seeds_give_different_placements() -> None:
    env = make_env("mw-pick-place", seed=0)
    starts = [env.reset(seed=s)[0] for s in (0, 1, 2)]
    assert not np.array_equal(starts[0], starts[1]) and not np.array_equal(starts[1], starts[2])


def test_vector_env_shapes_and_seeds() -> None:
    envs = make_vector_env("mw-reach", num_envs=3, seed=10)
    obs, _ = envs.reset()
    assert obs.shape == (3, 39) and obs.dtype == np.float32
    assert envs.action_space.shape == (3, 4) and envs.single_action_space.shape == (4,)
    for i in range(3):
        np.testing.assert_array_equal(obs[i], make_env("mw-reach", seed=10 + i).reset()[0])
    obs, rewards, terminated, _, infos = envs.step(envs.action_space.sample())
    assert obs.shape == (3, 39) and rewards.shape == (3,) and not terminated.any()
    assert infos["success"].shape == (3,)
    envs.close()


def test_bad_seed_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"seed must be in \[0, 2\*\*32\) for metaworld"):
        make_env("mw-reach", seed=-1)


def test_render_frame() -> None:
    problem = rendering_problem()
    if problem is not None:
        pytest.skip(problem)
    env = make_env("mw-door-open", seed=0)
    env.reset()
    frame = env.render()
    assert frame.shape == (384, 384, 3) and frame.dtype == np.uint8 and frame.std() > 0
    small = env.unwrapped.render(64)
    assert small.shape == (64, 64, 3) and small.std() > 0
    # TD-MPC2's view is upright: the wooden table top fills the bottom rows, none of the top ones
    f = frame.astype(int)
    wood = (f[..., 0] - f[..., 2] > 40) & (f[..., 1] - f[..., 2] > 15)
    assert wood[-96:].mean() > 0.3 and wood[:96].mean() < 0.05
    assert env.metadata["render_fps"] == pytest.approx(40.0)  # 1 / (0.0125 s x repeat 2)
    env.close()
