"""obs=rgb end to end: the frame-stack wrapper, real rendered envs of three suites, the conv
encoder with its shift augmentation, an update on uint8 batches, and a tiny `ldmpc train`."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ldmpc.config import derive, fingerprint, parse
from ldmpc.conv_encoder import PixelEncoder, random_shift
from ldmpc.envs import make_env, make_vector_env
from ldmpc.envs.pixels import PixelObservation
from ldmpc.envs.render import rendering_problem
from ldmpc.errors import UserError

RGB_SHAPE = (9, 64, 64)


def _needs_mujoco_rendering() -> None:
    problem = rendering_problem()
    if problem is not None:
        pytest.skip(problem)


def _needs_maniskill2() -> None:
    if importlib.util.find_spec("mani_skill2") is None:
        pytest.skip("mani_skill2 is not installed")
    if os.environ.get("LDMPC_SKIP_VULKAN") == "1":
        pytest.skip("LDMPC_SKIP_VULKAN=1: the setup skipped ManiSkill2's Vulkan path")


# ----------------------------------------------------------------------------- the wrapper
class _Counter(gym.Env):
    """A fake base env whose frame shows how many steps were taken (every pixel = that count)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"]}

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t, self.renders = 0, []

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return np.zeros(2, np.float32), 1.0, False, self.t >= 4, {"success": 0.0}

    def render(self, size: int | None = None, shadows: bool = True) -> np.ndarray:
        self.renders.append((size, shadows))
        return np.full((size or 8, size or 8, 3), 10 * self.t, np.uint8)


def test_frame_stack_semantics() -> None:
    env = PixelObservation(_Counter(), size=8)
    assert env.observation_space == gym.spaces.Box(0, 255, (9, 8, 8), np.uint8)
    obs, _ = env.reset()
    assert obs.dtype == np.uint8 and obs.shape == (9, 8, 8)
    assert (obs == 0).all()  # reset: every slot holds the first frame
    seen = [obs]
    for t in range(1, 4):
        obs, *_ = env.step(np.zeros(1))
        frames = [int(obs[3 * i : 3 * i + 3].max()) for i in range(3)]
        assert frames == [10 * max(t - 2, 0), 10 * max(t - 1, 0), 10 * t]  # oldest first
        np.testing.assert_array_equal(obs[:6], seen[-1][3:])  # each step shifts by one frame
        seen.append(obs)
    assert all(a is not b for a, b in itertools.pairwise(seen))  # never written in place
    assert env.unwrapped.renders == [(8, False)] * 4  # one shadowless frame per step


def test_wrapper_renders_once_per_agent_step() -> None:
    """Outside action repeat: a repeat-2 env renders one frame per agent step."""
    from ldmpc.envs.wrappers import standard_wrappers

    base = _Counter()
    env = PixelObservation(standard_wrappers(base, action_repeat=2, episode_length=10), size=8)
    env.reset()
    obs, *_ = env.step(np.zeros(1))
    assert base.t == 2 and len(base.renders) == 2  # reset + one step
    assert int(obs[-3:].max()) == 20


# ----------------------------------------------------------------------------- real envs
@pytest.mark.parametrize("task", ["walker-walk", "mw-door-open"])
def test_rgb_env_shapes(task: str) -> None:
    _needs_mujoco_rendering()
    env = make_env(task, seed=0, obs="rgb")
    assert env.observation_space == gym.spaces.Box(0, 255, RGB_SHAPE, np.uint8)
    obs, _ = env.reset(seed=0)
    assert obs.shape == RGB_SHAPE and obs.dtype == np.uint8
    np.testing.assert_array_equal(obs[:3], obs[6:])  # reset: the stack is the first frame
    for _ in range(3):
        nxt, reward, *_ = env.step(env.action_space.sample())
        assert nxt.shape == RGB_SHAPE and nxt.dtype == np.uint8 and isinstance(reward, float)
        np.testing.assert_array_equal(nxt[:6], obs[3:])
        obs = nxt
    assert not (obs[6:] == obs[:3]).all()  # the robot moved: frames differ
    assert env.render().shape[:2] != (64, 64)  # eval videos keep the adapter's large frame
    env.close()


def test_rgb_maniskill2_shapes() -> None:
    _needs_maniskill2()
    env = make_env("lift-cube", seed=0, obs="rgb")
    obs, _ = env.reset(seed=0)
    assert obs.shape == RGB_SHAPE and obs.dtype == np.uint8 and obs.std() > 5
    nxt, *_ = env.step(env.action_space.sample())
    assert nxt.shape == RGB_SHAPE and nxt.dtype == np.uint8
    np.testing.assert_array_equal(nxt[:6], obs[3:])
    env.close()


def test_vector_env_keeps_the_final_stack() -> None:
    """SAME_STEP autoreset: the finished episode's last stack is kept, the next one starts."""
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    envs = SyncVectorEnv(
        [lambda: PixelObservation(_Counter(), size=8)] * 2, autoreset_mode=AutoresetMode.SAME_STEP
    )
    obs, _ = envs.reset(seed=0)
    for _ in range(4):  # _Counter truncates after 4 steps
        obs, _, _, truncated, infos = envs.step(np.zeros((2, 1)))
    assert truncated.all() and infos["_final_obs"].all()
    final = infos["final_obs"][0]
    assert [int(final[3 * i].max()) for i in range(3)] == [20, 30, 40]
    assert obs.dtype == np.uint8 and (obs == 0).all()  # the next episode's first stack


def test_rgb_vector_env() -> None:
    _needs_mujoco_rendering()
    envs = make_vector_env("walker-walk", 2, seed=0, obs="rgb")
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, *RGB_SHAPE) and obs.dtype == np.uint8
    assert not np.array_equal(obs[0], obs[1])  # distinct seeds, distinct initial poses
    obs, *_ = envs.step(envs.action_space.sample())
    assert obs.shape == (2, *RGB_SHAPE) and obs.dtype == np.uint8
    envs.close()


def test_render_smoke_png(tmp_path: Path) -> None:
    """A 64x64 observation frame written as PNG and read back is not blank."""
    import imageio.v2 as imageio

    _needs_mujoco_rendering()
    env = make_env("quadruped-walk", seed=0, obs="rgb")
    obs, _ = env.reset(seed=0)
    frame = obs[-3:].transpose(1, 2, 0)
    path = tmp_path / "frame.png"
    imageio.imwrite(path, frame)
    back = imageio.imread(path)
    env.close()
    assert back.shape == (64, 64, 3) and back.dtype == np.uint8
    assert back.std() > 10, f"blank frame (std {back.std():.1f})"
    assert len(np.unique(back.reshape(-1, 3), axis=0)) > 50  # a scene, not a flat colour


def test_myosuite_rgb_is_a_user_error() -> None:
    with pytest.raises(UserError, match="obs=rgb is not supported for myosuite"):
        make_env("myo-reach", seed=0, obs="rgb")


# ----------------------------------------------------------------------------- encoder
@pytest.mark.parametrize(("latent_dim", "projected"), [(512, False), (128, True)])
def test_encoder_shapes_and_simnorm(latent_dim: int, projected: bool) -> None:
    enc = PixelEncoder(RGB_SHAPE, num_channels=32, latent_dim=latent_dim, simnorm_dim=8).eval()
    assert [tuple(m.weight.shape) for m in enc.convs if isinstance(m, torch.nn.Conv2d)] == [
        (32, 9, 7, 7),
        (32, 32, 5, 5),
        (32, 32, 3, 3),
        (32, 32, 3, 3),
    ]
    assert isinstance(enc.head, torch.nn.Linear) == projected  # NormedLinear is a Linear
    obs = torch.randint(0, 256, (3, 4, *RGB_SHAPE), dtype=torch.uint8)  # [H, B, C, H, W]
    z = enc(obs)
    assert z.shape == (3, 4, latent_dim)
    groups = z.reshape(3, 4, -1, 8)
    assert (groups >= 0).all() and torch.allclose(groups.sum(-1), torch.ones(()), atol=1e-5)
    # uint8 and float pixels are the same input; the caller's tensor is not modified
    floats = obs.float()
    torch.testing.assert_close(enc(floats), z)
    assert torch.equal(floats, obs.float())


def test_shift_augmentation_only_in_training() -> None:
    torch.manual_seed(0)
    enc = PixelEncoder(RGB_SHAPE, 32, 128, 8)
    obs = torch.randint(0, 256, (16, *RGB_SHAPE), dtype=torch.uint8)
    enc.eval()
    torch.testing.assert_close(enc(obs), enc(obs), rtol=0, atol=0)  # deterministic
    enc.train()
    a, b = enc(obs), enc(obs)
    assert not torch.allclose(a, b)  # a fresh shift per call
    enc.pad = 0
    with torch.no_grad():
        torch.testing.assert_close(enc(obs), enc.eval()(obs))  # the only train/eval difference


def test_random_shift_is_a_replicate_padded_crop() -> None:
    torch.manual_seed(0)
    pad = 3
    img = torch.randint(0, 256, (32, 3, 12, 12), dtype=torch.uint8)
    out = random_shift(img, pad)
    assert out.shape == img.shape and out.dtype == torch.uint8
    padded = F.pad(img.float(), (pad,) * 4, mode="replicate").to(torch.uint8)
    offsets = set()
    for k in range(len(img)):
        hits = [
            (i, j)
            for i in range(2 * pad + 1)
            for j in range(2 * pad + 1)
            if torch.equal(out[k], padded[k, :, i : i + 12, j : j + 12])
        ]
        assert hits, f"image {k} is not a crop of the padded image"
        offsets.add(hits[0])
    assert len(offsets) > 5  # offsets vary per image


def _rgb_cfg(**overrides: Any) -> Any:
    cfg = parse(
        {"task": "walker-walk", "obs": "rgb", "model_size": 1, "batch_size": 4, **overrides}
    )
    return derive(cfg, RGB_SHAPE, action_dim=6)


def test_update_on_uint8_pixels() -> None:
    """One agent update from a uint8 replay batch: finite, changes the conv weights; act works."""
    from ldmpc.agent import Agent
    from ldmpc.replay import EpisodeReplay

    torch.manual_seed(0)
    cfg = _rgb_cfg()
    agent = Agent(cfg)
    replay = EpisodeReplay(100, cfg.horizon, RGB_SHAPE, 6, seed=0, obs_dtype=np.uint8)
    rng = np.random.default_rng(0)
    T = 20
    replay.add_episode(
        {
            "obs": rng.integers(0, 256, (T + 1, *RGB_SHAPE), dtype=np.uint8),
            "action": rng.uniform(-1, 1, (T, 6)).astype(np.float32),
            "reward": rng.uniform(0, 1, T).astype(np.float32),
        }
    )
    batch = replay.sample(4)
    assert batch["obs"].dtype == np.uint8
    before = agent.model._encoder.convs[0].weight.detach().clone()
    info = agent.update({k: torch.as_tensor(v) for k, v in batch.items()})
    assert info["skipped"] == 0.0 and np.isfinite(info["total_loss"])
    assert not torch.equal(before, agent.model._encoder.convs[0].weight)
    obs = torch.as_tensor(batch["obs"][0])  # [B, 9, 64, 64]
    action, _ = agent.act(obs, eval_mode=True)
    assert action.shape == (4, 6) and action.abs().max() <= 1


def test_fingerprint_has_the_conv_width_for_rgb_only() -> None:
    fp = fingerprint(_rgb_cfg(num_channels=16))
    assert fp["obs"] == "rgb" and fp["obs_shape"] == list(RGB_SHAPE) and fp["num_channels"] == 16
    state = derive(parse({"task": "walker-walk", "model_size": 1}), (24,), 6)
    assert "num_channels" not in fingerprint(state)  # state checkpoints stay loadable


def test_multitask_rgb_is_refused() -> None:
    import dataclasses

    from ldmpc.conv_encoder import pixel_encoder

    cfg = dataclasses.replace(_rgb_cfg(), multitask=True, tasks=["walker-walk", "walker-run"])
    with pytest.raises(ValueError, match="single tasks only"):
        pixel_encoder(cfg)


# ----------------------------------------------------------------------------- ldmpc train
TINY_RGB = [
    "task=walker-walk",
    "obs=rgb",
    "model_size=1",
    "iterations=1",
    "num_samples=16",
    "num_elites=4",
    "num_pi_trajs=2",
    "horizon=3",
    "batch_size=16",
    "seed_steps=100",
    "steps=300",
    "eval_episodes=1",
    "eval_freq=100000",
    "checkpoint_freq=0",
    "progress=false",
    "torch_threads=1",
]


@pytest.mark.slow
def test_train_rgb_writes_eval_csv(tmp_path: Path) -> None:
    """A real `ldmpc train ... obs=rgb` run: seeding, updates on pixels, the step-0 eval."""
    _needs_mujoco_rendering()
    ray_tmp = tempfile.mkdtemp(prefix="ldray", dir="/tmp")  # Ray's socket paths must be short
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ldmpc.cli", "train", *TINY_RGB, f"work_dir={tmp_path}"],
            env={**os.environ, "RAY_TMPDIR": ray_tmp},
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run_dir = tmp_path / "walker-walk" / "1" / "default"
    with open(run_dir / "eval.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and rows[0]["step"] == "0" and np.isfinite(float(rows[0]["episode_reward"]))
    assert (run_dir / "checkpoints" / "latest.pt").is_file()
    manifest = (run_dir / "replay" / "manifest.json").read_text()
    assert '"|u1"' in manifest  # replay kept the pixels as uint8
