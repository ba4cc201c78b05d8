"""DMControl envs for real: every registered task, the episode contract, seeding, vector envs."""

from __future__ import annotations

import numpy as np
import pytest
from env_rollout import check_reset_and_step, check_seeding

from ldmpc.envs import make_env, make_vector_env
from ldmpc.envs.custom import CUSTOM_TASKS
from ldmpc.envs.render import rendering_problem
from ldmpc.errors import UserError
from ldmpc.tasks import TASKS

DMC_TASKS = [name for name, spec in TASKS.items() if spec.suite == "dmcontrol"]
# Custom tasks whose dense reward must vary under random actions (the rest are sparse).
DENSE_CUSTOM = [
    name
    for name, spec in TASKS.items()
    if spec.env_kwargs.get("custom") and not name.startswith(("reacher-", "hopper-"))
]


def _base(env):
    return env.unwrapped


@pytest.mark.parametrize("task", DMC_TASKS)
def test_every_task_resets_and_steps(task: str) -> None:
    check_reset_and_step(make_env(task, seed=0), 500, 2, success_values=(0.0,))


@pytest.mark.parametrize("task", ["cartpole-swingup", "pendulum-spin"])
def test_full_episode_truncates_after_500_agent_steps(task: str) -> None:
    env = make_env(task, seed=1)
    env.reset()
    env.action_space.seed(1)
    physics = _base(env).physics
    start, total = physics.data.time, 0.0
    for step in range(1, 501):
        _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        total += reward
        assert not terminated and truncated == (step == 500)
    control_dt = _base(env)._env.control_timestep()
    assert physics.data.time - start == pytest.approx(1000 * control_dt)  # action repeat 2
    assert np.isfinite(total) and 0.0 <= total <= 1000.0
    env.reset()  # a new episode starts cleanly after truncation
    assert not env.step(env.action_space.sample())[3]


@pytest.mark.parametrize("task", DENSE_CUSTOM)
def test_custom_dense_rewards_vary(task: str) -> None:
    env = make_env(task, seed=0)
    env.reset()
    env.action_space.seed(0)
    rewards = [env.step(env.action_space.sample())[1] for _ in range(100)]
    assert np.ptp(rewards) > 0 and min(rewards) >= 0.0 and max(rewards) <= 2.0


def test_custom_registry_matches_task_names() -> None:
    custom = {(s.env_kwargs["domain"], s.env_kwargs["task"]) for s in TASKS.values()
              if s.suite == "dmcontrol" and s.env_kwargs["custom"]}  # fmt: skip
    assert custom == set(CUSTOM_TASKS) and len(custom) == 28


def test_reacher_three_rewards_reaching_the_target() -> None:
    env = make_env("reacher-three-easy", seed=0)
    env.reset()
    physics = _base(env).physics
    finger = physics.named.data.geom_xpos["finger", :2].copy()
    physics.named.model.geom_pos["target", :2] = finger
    assert env.step(np.zeros(3, np.float32))[1] == pytest.approx(2.0)  # 1 per control step


def test_backwards_and_spin_rewards_follow_velocity() -> None:
    env = make_env("cheetah-run-backwards", seed=0)
    rewards = {}
    for sign in (-1.0, 1.0):
        env.reset(seed=0)
        _base(env).physics.named.data.qvel["rootx"] = 10.0 * sign
        rewards[sign] = env.step(np.zeros(6, np.float32))[1]
    assert rewards[-1.0] > 1.0 and rewards[1.0] == 0.0
    env = make_env("pendulum-spin", seed=0)
    env.reset()
    _base(env).physics.named.data.qvel["hinge"] = -12.0
    assert env.step(np.zeros(1, np.float32))[1] > 1.5


def test_cup_spin_starts_with_the_ball_in_the_cup_mostly() -> None:
    env = make_env("cup-spin", seed=0)
    in_cup = []
    for _ in range(20):
        env.reset()
        in_cup.append(_base(env).physics.in_target())
    assert sum(in_cup) >= 14


@pytest.mark.parametrize(
    "task", ["walker-walk", "cup-spin", "fish-obstacles", "reacher-three-hard"]
)
def test_same_seed_same_trajectory(task: str) -> None:
    check_seeding(task, steps=40, history=25)


def test_different_seeds_give_different_starts() -> None:
    env = make_env("walker-walk", seed=0)
    starts = [env.reset(seed=s)[0] for s in (0, 1, 2)]
    assert not np.array_equal(starts[0], starts[1]) and not np.array_equal(starts[1], starts[2])


def test_vector_env_shapes_and_seeds() -> None:
    envs = make_vector_env("cheetah-run", num_envs=3, seed=10)
    obs, _ = envs.reset()
    assert obs.shape == (3, 17) and obs.dtype == np.float32
    assert envs.action_space.shape == (3, 6) and envs.single_action_space.shape == (6,)
    for i in range(3):
        np.testing.assert_array_equal(obs[i], make_env("cheetah-run", seed=10 + i).reset()[0])
    envs.close()


def test_vector_env_same_step_autoreset_keeps_final_obs() -> None:
    """At truncation, step() returns the next episode's first obs; the last one is in infos."""
    envs = make_vector_env("cartpole-balance", num_envs=2, seed=0)
    singles = [make_env("cartpole-balance", seed=i) for i in range(2)]
    obs, _ = envs.reset()
    np.testing.assert_array_equal(obs, np.stack([e.reset()[0] for e in singles]))
    rng = np.random.default_rng(0)
    for step in range(1, 501):
        actions = rng.uniform(-1, 1, (2, 1)).astype(np.float32)
        obs, rewards, terminated, truncated, infos = envs.step(actions)
        results = [env.step(a) for env, a in zip(singles, actions)]
        np.testing.assert_array_equal(rewards, [r[1] for r in results])
        assert not terminated.any()
        assert truncated.all() if step == 500 else not truncated.any()
        if step < 500:
            np.testing.assert_array_equal(obs, np.stack([r[0] for r in results]))
            assert "final_obs" not in infos
    assert infos["_final_obs"].all()
    for i, env in enumerate(singles):
        np.testing.assert_array_equal(infos["final_obs"][i], results[i][0])
        np.testing.assert_array_equal(obs[i], env.reset()[0])  # already the next episode
    envs.close()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: make_env("walker-wlak", 0), "did you mean: walker-walk"),
        (lambda: make_env("mt30", 0), "expected one task"),
        (lambda: make_env("walker-walk", 0, obs="depth"), "obs=depth: allowed state, rgb"),
        (lambda: make_vector_env("walker-walk", 0, 0), "num_envs must be >= 1"),
        (lambda: make_env("walker-walk", -1), r"seed must be in \[0, 2\*\*32\)"),
    ],
)
def test_bad_requests_are_user_errors(call, message: str) -> None:
    with pytest.raises(UserError, match=message):
        call()


def test_render_frame() -> None:
    problem = rendering_problem()
    if problem is not None:
        pytest.skip(problem)
    env = make_env("quadruped-walk", seed=0)
    env.reset()
    frame = env.render()
    assert frame.shape == (384, 384, 3) and frame.dtype == np.uint8 and frame.std() > 0
    assert env.metadata["render_fps"] == pytest.approx(25.0)  # 1 / (0.02 s x repeat 2)


def test_rendering_problem_reports_instead_of_crashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUJOCO_GL", "no-such-backend")
    rendering_problem.cache_clear()
    try:
        problem = rendering_problem()
    finally:
        rendering_problem.cache_clear()
    assert problem is not None and "MUJOCO_GL=no-such-backend" in problem
    assert "\n" not in problem
