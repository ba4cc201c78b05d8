"""Evaluation: all eval episodes run as ONE vector env, planned in one batched call per step.

TD-MPC2 evaluates its 10 episodes one after another (~16 min per eval on this CPU); batching them
turns ten planning passes per step into one.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import numpy as np
import torch

from ldmpc.checkpoint import StopRequestedError, stop_requested
from ldmpc.config import Config
from ldmpc.envs import make_vector_env, vector_of

EVAL_SEED_OFFSET = 10_000  # eval envs never share seeds with the training envs


def eval_seed(cfg: Config) -> int:
    return int(cfg.seed) + EVAL_SEED_OFFSET


def _frames(envs: Any) -> list[np.ndarray] | None:
    try:
        return list(envs.call("render"))
    except Exception:  # rendering is optional: a GL failure must not lose the evaluation
        return None


def eval_task_ids(cfg: Config) -> list[int]:
    """Indices (into cfg.tasks) of the tasks an evaluation covers: all, or `eval_task`
    (validated with the config)."""
    if cfg.eval_task is None:
        return list(range(len(cfg.tasks)))
    return [list(cfg.tasks).index(cfg.eval_task)]


def _eval_envs(cfg: Config, episodes: int, seed: int) -> tuple[Any, np.ndarray]:
    """The vector env of one evaluation and the task index of each sub-env: `episodes` sub-envs
    per evaluated task (multitask: fixed-task `MultitaskEnv`s, padded like training's)."""
    if not cfg.multitask:
        return make_vector_env(cfg.task, episodes, seed, obs=cfg.obs), np.zeros(episodes, int)
    from ldmpc.envs.multitask import MultitaskEnv

    tasks = np.repeat(eval_task_ids(cfg), episodes)
    fns = [
        functools.partial(
            MultitaskEnv, list(cfg.tasks), first=int(t), stride=0, seed=seed + i,
            obs_dim=int(cfg.obs_shape[0]), action_dim=int(cfg.action_dim),
        )
        for i, t in enumerate(tasks)
    ]  # fmt: skip
    return vector_of(fns), tasks


def normalized_score(metric: str, ret: np.ndarray, success: np.ndarray) -> np.ndarray:
    """TD-MPC2's multitask score in [0, 100]: success rate x 100 for success tasks, return / 10
    for DMControl-style return tasks (1000 is the most an episode can earn)."""
    return 100.0 * success if metric == "success" else ret / 10.0


TEST_STEP_DELAY_ENV = "LDMPC_TEST_EVAL_STEP_S"  # seconds added to each evaluation step (tests)


def evaluate(
    agent: Any, cfg: Config, episodes: int, seed: int, video_dir: str | None = None
) -> dict[str, float]:
    """Run `episodes` episodes (per task when multitask) in parallel with the planner in eval
    mode; mean/std of return and success (multitask: also per task, and the normalized score)."""
    envs, env_task = _eval_envs(cfg, episodes, seed)
    episodes = len(env_task)
    obs, _ = envs.reset(seed=seed)
    device = agent.device
    returns = np.zeros(episodes)
    success = np.zeros(episodes)
    active = np.ones(episodes, dtype=bool)
    is_first = torch.ones(episodes, dtype=torch.bool, device=device)
    state = None
    videos: list[list[np.ndarray]] = [[] for _ in range(episodes)]
    slow = float(os.environ.get(TEST_STEP_DELAY_ENV, "0"))
    try:
        while active.any():
            if stop_requested():  # answered within one planning step; the loop owes the eval
                raise StopRequestedError(f"evaluation of {episodes} episodes")
            if slow and is_first.all():  # test-only: a long evaluation, announced after the
                # first stop check, so a signal sent once it is read lands inside the step
                print(f"{TEST_STEP_DELAY_ENV}: evaluation running", flush=True)
            time.sleep(slow)
            if video_dir is not None:
                for i, frame in enumerate(_frames(envs) or []):
                    if active[i]:
                        videos[i].append(frame)
            obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=device)
            with torch.no_grad():
                action, state = agent.act(obs_t, state, is_first, eval_mode=True)
            is_first = torch.zeros_like(is_first)
            obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
            returns += np.where(active, reward, 0.0)
            ending = active & (np.asarray(terminated) | np.asarray(truncated))
            final = info.get("final_info", {})  # SAME_STEP autoreset: `info` is the next reset's
            if ending.any() and "success" in final:  # TD-MPC2 scores success at the final step
                success = np.where(ending, final["success"], success)
            active &= ~ending
    finally:
        envs.close()
    if video_dir is not None:
        _write_videos(videos, video_dir)
    result = {
        "episode_reward": float(returns.mean()),
        "episode_reward_std": float(returns.std()),
        "episode_success": float(success.mean()),
    }
    if cfg.multitask:
        result.update(_per_task(cfg, env_task, returns, success))
    return result


def evaluate_at(agent: Any, cfg: Config, step: int) -> dict[str, float]:
    """A training run's periodic evaluation (online or offline): `eval_episodes` on the eval
    seeds, videos under <run_dir>/videos/step_<step> when save_video."""
    video = os.path.join(cfg.run_dir, "videos", f"step_{step}") if cfg.save_video else None
    return evaluate(agent, cfg, cfg.eval_episodes, seed=eval_seed(cfg), video_dir=video)


def _per_task(
    cfg: Config, env_task: np.ndarray, returns: np.ndarray, success: np.ndarray
) -> dict[str, float]:
    """reward/<task>, success/<task>, score/<task> of each evaluated task; the means over
    tasks (every task weighs the same) as episode_reward, episode_success, episode_score."""
    from ldmpc.tasks import get_task

    out: dict[str, float] = {}
    for t in np.unique(env_task):
        name, sel = cfg.tasks[int(t)], env_task == t
        out[f"reward/{name}"] = float(returns[sel].mean())
        out[f"success/{name}"] = float(success[sel].mean())
        score = normalized_score(get_task(name).metric, returns[sel], success[sel])
        out[f"score/{name}"] = float(score.mean())
    for key, prefix in (("episode_reward", "reward/"), ("episode_success", "success/"),
                        ("episode_score", "score/")):  # fmt: skip
        out[key] = float(np.mean([v for k, v in out.items() if k.startswith(prefix)]))
    return out


def _write_videos(videos: list[list[np.ndarray]], video_dir: str) -> None:
    import imageio

    os.makedirs(video_dir, exist_ok=True)
    for i, frames in enumerate(videos):
        if frames:
            path = os.path.join(video_dir, f"episode_{i:02d}.mp4")
            imageio.mimsave(path, frames, fps=15, macro_block_size=1)


def load_agent(cfg: Config) -> tuple[Any, dict[str, Any]]:
    """A fresh agent holding the weights of `cfg.checkpoint` (which must match cfg's
    fingerprint), and the checkpoint."""
    from ldmpc.agent import Agent
    from ldmpc.checkpoint import load_checkpoint
    from ldmpc.config import fingerprint
    from ldmpc.runtime import resolve_device
    from ldmpc.tdmpc2_models import load_into, read_tdmpc2_file

    device = resolve_device(cfg.device)
    agent = Agent(cfg, device, learn=False)  # evaluation builds no optimizers
    tdmpc2 = read_tdmpc2_file(cfg.checkpoint)  # a model file written by TD-MPC2 itself
    if tdmpc2 is not None:
        print(f"ldmpc: {load_into(agent.model, tdmpc2, cfg)}", flush=True)
        return agent, {"counters": {"env_steps": f"? (TD-MPC2 file {cfg.checkpoint})"}}
    ckpt = load_checkpoint(
        cfg.checkpoint, expected_fingerprint=fingerprint(cfg), map_location=device
    )
    agent.load_state_dict(ckpt["payload"]["agent"])
    return agent, ckpt


def evaluate_checkpoint(cfg: Config) -> dict[str, float]:
    """`ldmpc eval`: load a checkpoint into a fresh agent and print mean ± std return."""
    from ldmpc.runtime import set_threads

    set_threads(cfg.torch_threads)
    agent, ckpt = load_agent(cfg)
    video_dir = os.path.join(cfg.run_dir, "videos", "eval") if cfg.save_video else None
    result = evaluate(agent, cfg, cfg.eval_episodes, seed=eval_seed(cfg), video_dir=video_dir)
    counters = ckpt["counters"]
    step = counters.get("env_steps", f"{counters.get('offline_updates', '?')} (offline updates)")
    if cfg.multitask:
        print(format_task_table(cfg, result, step))
        return result
    line = (
        f"{cfg.task}  step={step}  return={result['episode_reward']:.1f} ± "
        f"{result['episode_reward_std']:.1f} over {cfg.eval_episodes} episodes"
    )
    if cfg.metric == "success":
        line += f"  success={result['episode_success']:.2f}"
    print(line)
    if video_dir:
        print(f"videos: {video_dir}")
    return result


def format_task_table(cfg: Config, result: dict[str, float], step: Any) -> str:
    """`ldmpc eval` of a multitask checkpoint: one row per evaluated task, then the mean."""
    names = [cfg.tasks[t] for t in eval_task_ids(cfg)]
    width = max(len("mean"), *(len(n) for n in names))
    lines = [
        f"{cfg.task}  step={step}  {cfg.eval_episodes} episodes per task",
        f"{'task':<{width}}  {'return':>8}  {'success':>7}  {'score':>6}",
    ]
    for name in names:
        lines.append(
            f"{name:<{width}}  {result[f'reward/{name}']:8.1f}  "
            f"{result[f'success/{name}']:7.2f}  {result[f'score/{name}']:6.1f}"
        )
    lines.append(
        f"{'mean':<{width}}  {result['episode_reward']:8.1f}  "
        f"{result['episode_success']:7.2f}  {result['episode_score']:6.1f}"
    )
    return "\n".join(lines)
