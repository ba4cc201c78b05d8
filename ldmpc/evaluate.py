"""Evaluation: all eval episodes run as ONE vector env, planned in one batched call per step.

TD-MPC2 evaluates its 10 episodes one after another (~16 min per eval on this CPU); batching them
turns ten planning passes per step into one.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from ldmpc.envs import make_vector_env

EVAL_SEED_OFFSET = 10_000  # eval envs never share seeds with the training envs


def eval_seed(cfg: DictConfig) -> int:
    return int(cfg.seed) + EVAL_SEED_OFFSET


def _frames(envs: Any) -> list[np.ndarray] | None:
    try:
        return list(envs.call("render"))
    except Exception:  # rendering is optional: a GL failure must not lose the evaluation
        return None


def evaluate(
    agent: Any, cfg: DictConfig, episodes: int, seed: int, video_dir: str | None = None
) -> dict[str, float]:
    """Run `episodes` episodes in parallel with the planner in eval mode; mean/std of return."""
    envs = make_vector_env(cfg.task, episodes, seed, obs=cfg.obs)
    obs, _ = envs.reset(seed=seed)
    device = agent.device
    returns = np.zeros(episodes)
    success = np.zeros(episodes)
    active = np.ones(episodes, dtype=bool)
    is_first = torch.ones(episodes, dtype=torch.bool, device=device)
    state = None
    videos: list[list[np.ndarray]] = [[] for _ in range(episodes)]
    try:
        while active.any():
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
    return {
        "episode_reward": float(returns.mean()),
        "episode_reward_std": float(returns.std()),
        "episode_success": float(success.mean()),
    }


def _write_videos(videos: list[list[np.ndarray]], video_dir: str) -> None:
    import imageio

    os.makedirs(video_dir, exist_ok=True)
    for i, frames in enumerate(videos):
        if frames:
            path = os.path.join(video_dir, f"episode_{i:02d}.mp4")
            imageio.mimsave(path, frames, fps=15, macro_block_size=1)


def load_agent(cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """A fresh agent holding the weights of `cfg.checkpoint` (which must match cfg's
    fingerprint), and the checkpoint."""
    from ldmpc.agent import Agent
    from ldmpc.checkpoint import load_checkpoint
    from ldmpc.config import fingerprint
    from ldmpc.runtime import resolve_device

    device = resolve_device(cfg.device)
    ckpt = load_checkpoint(
        cfg.checkpoint, expected_fingerprint=fingerprint(cfg), map_location=device
    )
    agent = Agent(cfg, device)
    agent.load_state_dict(ckpt["payload"]["agent"])
    return agent, ckpt


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, float]:
    """`ldmpc eval`: load a checkpoint into a fresh agent and print mean ± std return."""
    from ldmpc.runtime import set_threads

    set_threads(cfg.torch_threads)
    agent, ckpt = load_agent(cfg)
    video_dir = os.path.join(cfg.run_dir, "videos", "eval") if cfg.save_video else None
    result = evaluate(agent, cfg, cfg.eval_episodes, seed=eval_seed(cfg), video_dir=video_dir)
    step = ckpt["counters"].get("env_steps", "?")
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
