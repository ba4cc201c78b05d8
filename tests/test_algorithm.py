"""The RLlib skeleton of the local topology: planner module, episode stitching, training loop,
weight sync, checkpoint + resume. Real DMC env (episodes cut to 50 steps), real local Ray."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO
from ray_temp import ray_temp_env

import ldmpc.envs
from actors.env_runner import EpisodeStitcher
from actors.planner_module import FIRST, PlannerModule, module_config
from ldmpc.config import load

EPISODE = 50  # cartpole-swingup cut to 50 agent steps so a test sees several whole episodes
TINY = [
    "task=cartpole-swingup",
    "model_size=1",
    "num_samples=16",
    "iterations=1",
    "num_elites=4",
    "num_pi_trajs=2",
    "batch_size=16",
    "torch_threads=1",
    "num_envs=2",
    "seed_steps=60",
    "utd_ratio=0.5",
    "eval_episodes=2",
    "eval_freq=100000",
    "checkpoint_freq=0",
    "progress=false",
    "eval_parallel=false",  # evaluate here, where `short_episodes` cuts the episodes
]


@pytest.fixture(autouse=True)
def short_episodes(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ldmpc.envs.make_env

    def make_env(task: str, seed: int, obs: str = "state") -> gym.Env:
        return gym.wrappers.TimeLimit(real(task, seed, obs), EPISODE)

    monkeypatch.setattr(ldmpc.envs, "make_env", make_env)


def tiny_cfg(tmp_path: Any, *extra: str) -> Any:
    return load([*TINY, f"work_dir={tmp_path}", *extra])


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray whose files stay in a temp dir (short: unix socket paths are limited)."""
    import ray

    from actors.ray_init import init_ray

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as run_training does (torch_threads=1): 2 cores stall otherwise
    with ray_temp_env() as env, pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        temp = env["RAY_TMPDIR"]
        # a cluster that `ray start` recorded here and that is gone: address=null must still
        # start a local Ray (a bare ray.init() would try to join it)
        os.makedirs(os.path.join(temp, "ray"))
        with open(os.path.join(temp, "ray", "ray_current_cluster"), "w") as fh:
            fh.write("127.0.0.1:9")
        cfg = load([*TINY, f"work_dir={temp}"])
        assert init_ray(cfg)
        assert ray.get_runtime_context().gcs_address != "127.0.0.1:9"
        try:
            yield
        finally:
            ray.shutdown()
            torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------- no Ray
def test_module_resets_warm_start_at_episode_start(tmp_path: Any) -> None:
    """RLlib's env-to-module connector feeds the initial state to fresh episodes and the last
    STATE_OUT to running ones; the module plans all envs in one call with the right is_first."""
    from actors.algorithm import rllib_config

    cfg = tiny_cfg(tmp_path)
    envs = gym.vector.SyncVectorEnv([lambda: ldmpc.envs.make_env(cfg.task, 0)] * 2)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    module = PlannerModule(
        observation_space=obs_space,
        action_space=act_space,
        inference_only=True,
        model_config=module_config(cfg),
    )
    H, A = cfg.horizon, cfg.action_dim
    prev_mean = torch.arange(H * A, dtype=torch.float32).reshape(H, A) / 10
    fresh, running = (SingleAgentEpisode(observation_space=obs_space, action_space=act_space)
                      for _ in range(2))  # fmt: skip
    obs = obs_space.sample()
    fresh.add_env_reset(observation=obs)
    running.add_env_reset(observation=obs)
    running.add_env_step(
        observation=obs,
        action=act_space.sample(),
        reward=0.0,
        extra_model_outputs={Columns.STATE_OUT: {"mean": prev_mean.numpy(), FIRST: np.float32(0)}},
    )
    connector = rllib_config(cfg).build_env_to_module_connector(env=envs)
    batch = connector(rl_module=module, batch={}, episodes=[fresh, running], explore=True)

    seen: dict[str, Any] = {}
    real_act = module.agent.act

    def spy(obs: torch.Tensor, state: dict, is_first: torch.Tensor, eval_mode: bool) -> Any:
        seen.update(obs=obs, mean=state["mean"].clone(), is_first=is_first.clone())
        return real_act(obs, state, is_first, eval_mode=eval_mode)

    module.agent.act = spy
    out = module.forward_exploration(batch)
    assert seen["obs"].shape == (2, *cfg.obs_shape)  # both envs in ONE planning call
    assert seen["is_first"].tolist() == [True, False]
    assert torch.equal(seen["mean"][0], torch.zeros(H, A))
    assert torch.allclose(seen["mean"][1], prev_mean)
    assert out[Columns.ACTIONS].shape == (2, 1, A)  # RLlib's time axis for stateful modules
    assert out[Columns.ACTIONS].abs().max() <= 1
    assert out[Columns.STATE_OUT]["mean"].shape == (2, H, A)
    assert out[Columns.STATE_OUT][FIRST].tolist() == [0.0, 0.0]
    envs.close()


def _episode(obs_dim: int, steps: int, start: int = 0) -> SingleAgentEpisode:
    ep = SingleAgentEpisode()
    ep.add_env_reset(observation=np.full(obs_dim, start, np.float32))
    for t in range(start + 1, start + steps + 1):
        ep.add_env_step(
            observation=np.full(obs_dim, t, np.float32),
            action=np.array([t / 100], np.float32),
            reward=float(t),
            extra_model_outputs={WEIGHTS_SEQ_NO: t // 3},
        )
    return ep


def test_stitcher_joins_chunks_across_sample_calls() -> None:
    ep = _episode(3, 4)
    tail = ep.cut(len_lookback_buffer=1)  # what the runner does at the end of sample()
    for t in (5, 6):
        tail.add_env_step(
            observation=np.full(3, t, np.float32),
            action=np.array([t / 100], np.float32),
            reward=float(t),
            extra_model_outputs={WEIGHTS_SEQ_NO: 7},
            truncated=t == 6,
        )
    stitcher = EpisodeStitcher()
    assert stitcher.add([ep.to_numpy()]) == []  # not finished yet: nothing to store
    assert stitcher.num_open == 1
    (done,) = stitcher.add([tail.to_numpy(), _episode(3, 2, start=40).to_numpy()])
    assert stitcher.num_open == 1  # the other episode is still running
    (cut,) = stitcher.flush()  # a run that stops keeps it as a truncated episode
    assert stitcher.num_open == 0 and len(cut.data["action"]) == 2
    assert not cut.data["terminated"].any()
    np.testing.assert_array_equal(done.data["obs"][:, 0], np.arange(7))
    np.testing.assert_allclose(done.data["action"][:, 0], np.arange(1, 7) / 100)
    np.testing.assert_array_equal(done.data["reward"], np.arange(1, 7))
    assert not done.data["terminated"].any()  # truncated, not terminated: bootstrap later
    assert done.ret == 21.0 and done.weights_seq_no == 7


# ---------------------------------------------------------------------------------- real Ray
@pytest.mark.heavy
def test_training_loop_replay_utd_and_weight_sync(
    local_ray: None, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from actors.algorithm import build_algorithm

    cfg = tiny_cfg(tmp_path)
    algo = build_algorithm(cfg)
    try:
        c = algo.counters
        algo.sample_until = cfg.seed_steps  # train() stops sampling exactly there
        while c.env_steps < cfg.seed_steps:
            algo.train()
        assert c.env_steps == cfg.seed_steps and c.episodes == 0  # 30 of 50 steps per env
        assert c.updates == 0 and algo.env_runner.get_state()[WEIGHTS_SEQ_NO] == 0
        algo.sample_until = 3 * EPISODE * cfg.num_envs
        while c.env_steps < algo.sample_until or c.owed_updates >= 1:
            result = algo.train()
        assert c.env_steps == algo.sample_until
        # TD-MPC2's schedule: seed_steps pretraining updates, then utd_ratio per env step.
        due = cfg.seed_steps + cfg.utd_ratio * (c.env_steps - cfg.seed_steps)
        assert c.updates + c.owed_updates == pytest.approx(due)
        assert c.owed_updates < 1
        # Whole episodes only, all of them in replay.
        assert c.episodes >= 4 and algo.replay.num_episodes == c.episodes
        assert algo.replay.num_transitions == EPISODE * c.episodes
        assert result["ldmpc"]["replay_episodes"] == c.episodes
        # Every update bumps the learner's weights version; the runner planned with the newest.
        version = algo.env_runner.get_state()[WEIGHTS_SEQ_NO]
        assert version == c.updates
        before = c.updates
        algo.sample_until += 2 * cfg.num_envs
        while c.updates == before:
            algo.train()
        assert algo.env_runner.get_state()[WEIGHTS_SEQ_NO] == c.updates > version
        # local mode: the runner plans with the learner's own tensors (no copy per update)
        learner_module = algo.learner_group._learner.module["default_policy"].unwrapped()
        assert algo.env_runner.shares_weights(learner_module)
        learner_out = result["learners"]["default_policy"]
        assert np.isfinite(learner_out["total_loss"]) and learner_out["pi_scale"] >= 1
        assert result["learners"]["nonfinite_updates"] == 0
        _check_nonfinite_loss_is_skipped(algo, monkeypatch)
        assert algo.metrics.peek(("learners", "nonfinite_updates")) == 1
    finally:
        algo.stop()
    assert os.path.isdir(os.path.join(cfg.run_dir, "rllib"))  # not ~/ray_results


def test_sync_every_keeps_the_local_runner_on_a_copy(local_ray: None, tmp_path: Any) -> None:
    """sync_every > 1 asks for weights that lag: the local runner gets copies every N updates
    instead of sharing the learner's tensors (which would show it every update)."""
    from actors.algorithm import build_algorithm

    cfg = tiny_cfg(tmp_path, "sync_every=3")
    algo = build_algorithm(cfg)
    try:
        while algo.counters.updates < 7:
            algo.train()
        learner_module = algo.learner_group._learner.module["default_policy"].unwrapped()
        assert not algo.env_runner.shares_weights(learner_module)
        assert 0 < algo.env_runner.get_state()[WEIGHTS_SEQ_NO] <= algo.counters.updates
    finally:
        algo.stop()


@pytest.mark.heavy
def test_overlap_keeps_the_schedule_and_is_deterministic(local_ray: None, tmp_path: Any) -> None:
    """overlap=true: updates run on a second thread while the runner plans. The update-to-data
    schedule is the sync loop's, the runner plans with a copy (an update changes the learner's
    tensors in place, mid-plan), and two runs of one seed end with identical weights: the
    threads share no randomness and every hand-over happens at a fixed point of the round."""
    from actors.algorithm import build_algorithm

    finals = []
    for run in ("a", "b"):
        cfg = tiny_cfg(tmp_path / run, "overlap=true")
        algo = build_algorithm(cfg)
        try:
            c = algo.counters
            algo.sample_until = 3 * EPISODE * cfg.num_envs
            while c.env_steps < algo.sample_until or c.owed_updates >= 1:
                algo.train()
            due = cfg.seed_steps + cfg.utd_ratio * (c.env_steps - cfg.seed_steps)
            assert c.updates + c.owed_updates == pytest.approx(due) and c.owed_updates < 1
            assert c.episodes >= 4 and algo.replay.num_episodes == c.episodes
            learner_module = algo.learner_group._learner.module["default_policy"].unwrapped()
            assert not algo.env_runner.shares_weights(learner_module)
            assert algo.env_runner.get_state()[WEIGHTS_SEQ_NO] == c.updates
            acting = algo.env_runner.module.state_dict()  # a copy of the latest weights
            for name, tensor in learner_module.state_dict().items():
                assert torch.equal(acting[name], tensor), name
            assert algo._updater is not None  # the updates did run on the thread
            finals.append(algo.agent_weights()["model"])
        finally:
            algo.stop()
    for name, tensor in finals[0].items():
        assert torch.equal(tensor, finals[1][name]), name


@pytest.mark.parametrize(
    "extra", [["num_env_runners=1"], ["async=true", "num_env_runners=1"], ["torch_threads=2"]]
)
def test_overlap_outside_local_mode_is_one_line(tmp_path: Any, extra: list[str]) -> None:
    from ldmpc.errors import UserError

    with pytest.raises(UserError, match=r"^(overlap|torch_threads)="):
        tiny_cfg(tmp_path, "overlap=true", *extra)


def _check_nonfinite_loss_is_skipped(algo: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN loss skips the step: weights, target Q, Q scale and optimizer state stay put."""
    update = algo.learner_group._learner._updates["default_policy"]  # local mode: in-process
    real = update._loss_fn

    def nan_loss(*args: Any) -> Any:
        loss, metrics, new_scale = real(*args)
        return loss * float("nan"), metrics, new_scale

    before = algo.agent_weights()
    monkeypatch.setattr(update, "_loss_fn", nan_loss)
    algo._learn(1)
    monkeypatch.setattr(update, "_loss_fn", real)
    after = algo.agent_weights()
    assert after["counters"]["skipped_updates"] == before["counters"]["skipped_updates"] + 1
    for key in ("model", "scale"):
        for name, tensor in before[key].items():
            assert torch.equal(tensor, after[key][name]), name
    assert after["optim"]["state"].keys() == before["optim"]["state"].keys()
    for i, st in before["optim"]["state"].items():
        assert torch.equal(st["exp_avg"], after["optim"]["state"][i]["exp_avg"])


@pytest.mark.heavy
@pytest.mark.parametrize("mode", [[], ["overlap=true"]], ids=["sync", "overlap"])
def test_checkpoint_and_resume_continue_the_run(
    local_ray: None, tmp_path: Any, mode: list[str]
) -> None:
    from actors.online import run_training
    from ldmpc.replay import EpisodeReplay, replay_dir

    first = run_training(tiny_cfg(tmp_path, "steps=120", *mode))
    assert not first["interrupted"] and first["eval"] is not None
    assert first["env_steps"] >= 120 and first["updates"] > 0
    assert first["owed_updates"] < 1  # a run pays the updates it owes before it ends
    assert os.path.isfile(first["checkpoint"])

    cfg = tiny_cfg(tmp_path, "steps=220", "resume=true", *mode)
    second = run_training(cfg)
    assert second["env_steps"] >= 220 and second["episodes"] > first["episodes"]
    # The seed phase and its pretraining burst are not repeated after the resume.
    due = cfg.seed_steps + cfg.utd_ratio * (second["env_steps"] - cfg.seed_steps)
    assert second["updates"] + second["owed_updates"] == pytest.approx(due)
    replay = EpisodeReplay(cfg.buffer_size, cfg.horizon, cfg.obs_shape, cfg.action_dim)
    replay.load(replay_dir(cfg))
    # Every env step of both runs is in replay: whole episodes plus the ones cut by each stop.
    assert replay.num_transitions == second["env_steps"]
    assert replay.num_episodes > second["episodes"]  # the first run's 2 cut episodes
    steps = [int(float(line.split(",")[0])) for line in _csv_rows(cfg.run_dir, "train.csv")]
    assert steps == sorted(steps) and len(steps) == second["episodes"]
    assert [line.split(",")[0] for line in _csv_rows(cfg.run_dir, "eval.csv")] == ["0"]

    # Resumed at an eval step without its eval row (a stop between that step's checkpoint and
    # its eval): the owed eval runs first, so the curve has no hole.
    end = second["env_steps"]
    third = run_training(
        tiny_cfg(tmp_path, f"steps={end}", "resume=true", f"eval_freq={end}", *mode)
    )
    assert third["env_steps"] == end
    assert [line.split(",")[0] for line in _csv_rows(cfg.run_dir, "eval.csv")] == ["0", str(end)]


def test_restored_state_does_not_replay_step_zero_randomness(
    local_ray: None, tmp_path: Any
) -> None:
    from actors.algorithm import build_algorithm

    cfg = tiny_cfg(tmp_path, "steps=50")
    algo = build_algorithm(cfg)
    try:
        module = algo.env_runner_group.local_env_runner.module
        assert module.agent.generator.initial_seed() == cfg.seed
        state = algo.ldmpc_state()
        state["counters"]["env_steps"] = 1234
        algo.set_ldmpc_state(state)
        assert module.agent.generator.initial_seed() == cfg.seed + 1234
    finally:
        algo.stop()


def test_too_long_ray_temp_dir_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from actors.ray_init import check_ray_temp_dir
    from ldmpc.errors import UserError

    monkeypatch.setenv("RAY_TMPDIR", "/tmp/" + "x" * 60)
    with pytest.raises(UserError, match=r"RAY_TMPDIR=/tmp/x+ is too long"):
        check_ray_temp_dir()
    monkeypatch.setenv("RAY_TMPDIR", "/tmp/ldr1234")
    check_ray_temp_dir()


def _csv_rows(run_dir: str, name: str) -> list[str]:
    with open(os.path.join(run_dir, name)) as fh:
        return fh.read().splitlines()[1:]


@pytest.mark.heavy
def test_multitask_run_trains_checkpoints_and_resumes(
    local_ray: None, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three tasks online (episodes cut to 50): one sub-env per task, every task in replay with
    zero-padded observations and actions, finite weights, per-task eval, and a resume that
    loads the multitask checkpoint and continues."""
    from actors.online import run_training
    from ldmpc.agent import Agent
    from ldmpc.checkpoint import latest_checkpoint, load_checkpoint
    from ldmpc.replay import EpisodeReplay, replay_dir

    tasks = "cartpole-swingup,walker-walk,cup-catch"  # obs 5, 24, 8; actions 1, 6, 2
    args = [f"task={tasks}", "num_envs=3", "seed_steps=150", "eval_freq=600"]
    first = run_training(tiny_cfg(tmp_path, *args, "steps=600"))
    assert first["updates"] > 300 and not first["interrupted"]
    for name in tasks.split(","):
        assert np.isfinite(first["eval"][f"score/{name}"])
    cfg = tiny_cfg(tmp_path, *args, "steps=750", "resume=true")
    second = run_training(cfg)
    assert second["env_steps"] >= 750 and second["updates"] > first["updates"]

    replay = EpisodeReplay(cfg.buffer_size, cfg.horizon, cfg.obs_shape, cfg.action_dim)
    replay.load(replay_dir(cfg))
    by_task: dict[int, int] = {}
    for ep in replay.episodes():
        by_task[ep["task"]] = by_task.get(ep["task"], 0) + 1
        obs_dim, action_dim = cfg.obs_dims[ep["task"]], cfg.action_dims[ep["task"]]
        assert np.all(ep["obs"][:, obs_dim:] == 0) and np.all(ep["action"][:, action_dim:] == 0)
        assert np.any(ep["action"][:, :action_dim] != 0)
    assert sorted(by_task) == [0, 1, 2] and len(set(by_task.values())) == 1  # round-robin
    ckpt = load_checkpoint(latest_checkpoint(cfg.run_dir))
    agent = Agent(cfg)
    agent.load_state_dict(ckpt["payload"]["agent"])
    assert all(torch.isfinite(p).all() for p in agent.model.parameters())
    header = _csv_header(cfg.run_dir, "eval.csv")
    assert "episode_score" in header and "score/walker-walk" in header
    # `ldmpc eval` of the multitask checkpoint, one named task: a table row for it and the mean
    from ldmpc.evaluate import evaluate_checkpoint

    one = tiny_cfg(tmp_path, *args, f"checkpoint={latest_checkpoint(cfg.run_dir)}",
                   "eval_task=walker-walk")  # fmt: skip
    result = evaluate_checkpoint(one)
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table[-2:]] == ["walker-walk", "mean"]
    assert result["episode_score"] == result["score/walker-walk"]


def _csv_header(run_dir: str, name: str) -> list[str]:
    with open(os.path.join(run_dir, name)) as fh:
        return fh.readline().strip().split(",")
