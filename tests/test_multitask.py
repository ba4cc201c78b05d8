"""Multitask: padded spaces, task-id slot, action masks end to end, per-task discounts, eval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldmpc import config
from ldmpc.agent import Agent
from ldmpc.envs.multitask import MultitaskEnv, multitask_episode, split_task_obs, task_dims
from ldmpc.errors import UserError
from ldmpc.evaluate import evaluate, format_task_table
from ldmpc.logging import eval_fields
from ldmpc.losses import td_target
from ldmpc.tasks import TASK_SETS, resolve_tasks

TASKS = "cartpole-swingup,walker-walk,mw-reach"  # action dims 1, 6, 4; episode lengths 500/100
TINY = [
    "model_size=1",
    "num_samples=16",
    "iterations=1",
    "num_elites=4",
    "num_pi_trajs=2",
    "horizon=3",
    "batch_size=8",
    "torch_threads=1",
]


@pytest.fixture(scope="module")
def cfg() -> object:
    return config.load([f"task={TASKS}", *TINY])


def test_task_sets_match_tdmpc2() -> None:
    """TD-MPC2's mt30 = 30 DMC tasks, mt80 = mt30 + the 50 MetaWorld tasks; mw10 = MT10."""
    assert len(TASK_SETS["mt30"]) == 30 and len(TASK_SETS["mt80"]) == 80
    assert TASK_SETS["mt80"][:30] == TASK_SETS["mt30"]
    assert all(t.startswith("mw-") for t in TASK_SETS["mt80"][30:] + TASK_SETS["mw10"])
    assert len(TASK_SETS["mw10"]) == 10
    assert [s.name for s in resolve_tasks("walker-walk, cheetah-run")] == [
        "walker-walk",
        "cheetah-run",
    ]


def test_mt30_dims_are_tdmpc2s() -> None:
    """TD-MPC2's mt30 pads observations to 24 and actions to 6."""
    obs_dims, action_dims = task_dims(tuple(TASK_SETS["mt30"]))
    assert (max(obs_dims), max(action_dims)) == (24, 6)
    assert min(action_dims) == 1


def test_derived_per_task_values(cfg: object) -> None:
    assert cfg.multitask and cfg.tasks == TASKS.split(",")
    assert cfg.action_dims == [1, 6, 4] and cfg.action_dim == 6
    assert cfg.obs_shape == [max(cfg.obs_dims)]
    assert cfg.episode_lengths == [500, 500, 100]
    assert cfg.discounts == [0.99, 0.99, 0.95]  # TD-MPC2's heuristic per episode length
    assert cfg.metric == "score"


def test_multitask_rgb_is_one_line_error() -> None:
    with pytest.raises(UserError, match="multitask runs use obs=state"):
        config.parse([f"task={TASKS}", "obs=rgb"])


def test_env_pads_observations_and_rotates_tasks(cfg: object) -> None:
    D = cfg.obs_shape[0]
    env = MultitaskEnv(cfg.tasks, first=1, stride=2, seed=0, obs_dim=D, action_dim=6)
    try:
        seen = []
        for _ in range(3):
            obs, _ = env.reset()
            assert obs.shape == (D + 1,) and obs.dtype == np.float32
            index = int(obs[-1])
            seen.append(index)
            real = cfg.obs_dims[index]
            assert np.all(obs[real:-1] == 0.0)  # zero padding after the task's own state
            obs, *_ = env.step(np.ones(6, np.float32))  # extra action dims are ignored
            assert int(obs[-1]) == index
        assert seen == [1, 0, 2]  # (first + k * stride) % T
    finally:
        env.close()


def test_episode_conversion_zeroes_padded_actions(cfg: object) -> None:
    T = 4
    obs = np.zeros((T + 1, cfg.obs_shape[0] + 1), np.float32)
    obs[:, -1] = 2  # mw-reach: 4 real action dims
    data = {
        "obs": obs,
        "action": np.ones((T, 6), np.float32),
        "reward": np.zeros(T, np.float32),
        "terminated": np.zeros(T, bool),
    }
    ep = multitask_episode(data, cfg.action_dims)
    assert ep["task"] == 2 and ep["obs"].shape == (T + 1, cfg.obs_shape[0])
    assert np.all(ep["action"][:, 4:] == 0) and np.all(ep["action"][:, :4] == 1)


def test_embedding_and_planned_actions_respect_masks(cfg: object) -> None:
    """Task embeddings are norm-clipped; padded action dims stay exactly zero in planning,
    in the policy prior, with eval and exploration noise."""
    agent = Agent(cfg)
    emb = agent.model._task_emb(torch.arange(3))
    assert emb.shape == (3, cfg.task_dim) and torch.all(emb.norm(dim=-1) <= 1 + 1e-5)
    E = 6
    obs = torch.randn(E, cfg.obs_shape[0] + 1)
    obs[:, -1] = torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.float32)
    for eval_mode in (False, True):
        action, state = agent.act(obs, None, eval_mode=eval_mode)
        mask = agent.model._action_masks[obs[:, -1].long()]
        assert action.shape == (E, cfg.action_dim)
        assert torch.all(action[mask == 0] == 0)
        assert torch.all(state["mean"][mask.unsqueeze(1).expand_as(state["mean"]) == 0] == 0)
        assert action[mask == 1].abs().sum() > 0
    _, task = split_task_obs(obs)
    a, _ = agent.model.pi(agent.model.encode(obs[:, :-1], task), task)
    assert torch.all(a[agent.model._action_masks[task] == 0] == 0)


def test_td_target_uses_each_tasks_discount(cfg: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """With Q = 1 and r = 0 the TD target is each item's own task discount."""
    model = Agent(cfg).model
    z = torch.zeros(1, 3, cfg.latent_dim)
    reward = torch.zeros(1, 3, 1)
    monkeypatch.setattr(model, "Q", lambda z, *args, **kwargs: torch.ones(*z.shape[:-1], 1))
    td = td_target(model, z, reward, torch.zeros_like(reward), cfg, torch.tensor([0, 1, 2]))
    assert torch.allclose(td.squeeze(), torch.tensor([0.99, 0.99, 0.95]))
    assert "_discounts" not in model.state_dict()  # derived from the config: never restored


def test_multitask_eval_reports_every_task(cfg: object) -> None:
    """Eval covers each task with its own episodes (mw-reach ends at 100 steps, DMC at 500)."""
    short = config.load(["task=cartpole-swingup,mw-reach", *TINY, "mpc=false"])
    agent = Agent(short)
    result = evaluate(agent, short, episodes=2, seed=3)
    for name in short.tasks:
        assert {f"reward/{name}", f"success/{name}", f"score/{name}"} <= set(result)
    assert result["score/cartpole-swingup"] == pytest.approx(result["reward/cartpole-swingup"] / 10)
    assert result["score/mw-reach"] == pytest.approx(100 * result["success/mw-reach"])
    scores = [result[f"score/{n}"] for n in short.tasks]
    assert result["episode_score"] == pytest.approx(np.mean(scores))
    assert set(eval_fields(short)) >= set(result)
    table = format_task_table(short, result, step=0)
    assert "cartpole-swingup" in table and "mw-reach" in table and "mean" in table


def test_eval_task_must_belong_to_the_set(cfg: object) -> None:
    from ldmpc.evaluate import eval_task_ids

    one = config.load([f"task={TASKS}", *TINY, "eval_task=walker-walk"])
    assert eval_task_ids(one) == [1]
    with pytest.raises(UserError, match="walker-walk"):
        config.parse([f"task={TASKS}", *TINY, "eval_task=walker-wlk"])
    with pytest.raises(UserError, match="not a task of task=cup-catch"):
        config.parse(["task=cup-catch", "eval_task=walker-walk"])


def test_env_creator_spreads_runner_sub_envs_over_the_task_set(cfg: object) -> None:
    """Remote runner w (1-based) with n sub-envs plays tasks (w-1)*n + i first, stride = all
    sub-envs of the run: two runners x 2 envs over 3 tasks cover every task."""
    from ray.rllib.env.env_context import EnvContext

    from actors.algorithm import env_config
    from actors.env_runner import make_ldmpc_env

    two_by_two = config.load([f"task={TASKS}", *TINY, "num_env_runners=2", "num_envs=2"])
    firsts = []
    for worker in (1, 2):
        ctx = EnvContext(env_config(two_by_two), worker_index=worker, num_workers=2)
        envs = [make_ldmpc_env(ctx) for _ in range(2)]
        firsts += [env.task_index for env in envs]
        assert all(env._stride == 4 for env in envs)
        assert envs[0].observation_space.shape == (two_by_two.obs_shape[0] + 1,)
    assert firsts == [0, 1, 2, 0]  # (first % 3): global sub-env indices 0..3


@pytest.mark.parametrize("switches", [[], ["dynamics=diffusion", "proposal=both"]])
def test_multitask_update_and_plan_with_each_dynamics(switches: list[str]) -> None:
    """Task-conditioned updates (baseline and both diffusion parts) are finite and planning keeps
    padded dims at zero with diffusion proposals in the candidate pool."""
    cfg = config.load([f"task={TASKS}", *TINY, *switches, "num_diffusion_proposals=4"])
    agent = Agent(cfg)
    B, H = 8, cfg.window
    g = torch.Generator().manual_seed(0)
    task = torch.arange(B) % 3
    mask = agent.model._action_masks[task]  # [B, A]
    batch = {
        "obs": torch.randn(H + 1, B, cfg.obs_shape[0], generator=g),
        "action": (torch.rand(H, B, cfg.action_dim, generator=g) * 2 - 1) * mask,
        "reward": torch.rand(H, B, 1, generator=g),
        "terminated": torch.zeros(H, B, 1),
        "task": task,
    }
    for _ in range(3):
        metrics = agent.update(batch)
    assert all(np.isfinite(v) for v in metrics.values())
    obs = torch.cat([batch["obs"][0, :3], torch.arange(3.0).unsqueeze(1)], dim=1)
    action, _ = agent.act(obs, None)
    assert torch.all(action[agent.model._action_masks[torch.arange(3)] == 0] == 0)


def test_sub_envs_never_share_start_states() -> None:
    """Two sub-envs rotating over three tasks (seeded as a vector env seeds them) and a re-seed:
    every episode starts from a different state, also for task envs built later."""
    tasks = ["cartpole-swingup", "walker-walk", "cup-catch"]
    dims = task_dims(tuple(tasks))
    D, A = max(dims[0]), max(dims[1])
    envs = [MultitaskEnv(tasks, first=i, stride=2, seed=7, obs_dim=D, action_dim=A) for i in (0, 1)]
    starts: dict[int, list[np.ndarray]] = {0: [], 1: [], 2: []}
    try:
        for k in range(6):
            for i, env in enumerate(envs):
                reseed = {0: 100 + i, 3: 200 + i}.get(k)  # the first reset, a resume's reseed
                obs, _ = env.reset(seed=reseed)
                starts[int(obs[-1])].append(obs[:-1])
    finally:
        for env in envs:
            env.close()
    for task, obs in starts.items():
        assert len(obs) == 4
        distinct = {o.tobytes() for o in obs}
        assert len(distinct) == len(obs), tasks[task]
